"""Migration safety: lint pending SQL for what hurts blue while green migrates, and run migrations
with timeouts so that a lock wait can never freeze blue.

In a blue-green deploy green runs its migrations while blue keeps serving every class from the
same database. Two things can go wrong: a statement takes a lock (or rewrites a table) that makes
blue's queries wait, or a statement removes something blue still uses (a column, a table, a name).
The SQL itself is read by squawk (a maintained PostgreSQL linter, run once over all files through
its JSON reporter); recess adds the blue-green verdict of each rule: which phase it belongs to,
whether it blocks, and what to do instead. See docs/MIGRATION_SAFETY.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from commands.config import MigrationRunner, format_duration
from platforms.base import Result

BLOCK, WARN = "block", "warn"
LOCK, CONTRACT, ADVICE, PARSE = "lock", "contract", "advice", "parse"

MIN_SQUAWK = (2, 70)
INSTALL_HINT = "install it with `.venv/bin/pip install 'squawk-cli>=2.70'` (or `make test`, which installs the project)"


class LintUsageError(Exception):
    """The lint cannot run on this input (missing path, empty or non-SQL file, no linter).

    The message is shown to the user as is.
    """


# -- findings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    file: str
    line: int  # 1-based
    rule: str
    severity: str  # "block" | "warn"
    message: str  # one line, in blue-green terms
    fix: str  # the safe alternative
    phase: str  # "lock" | "contract" | "advice" | "parse"

    def to_json(self) -> dict[str, Any]:
        """The migration-lint contract: exactly these keys."""
        return {
            "file": self.file,
            "line": self.line,
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class LintReport:
    files: tuple[str, ...]
    findings: tuple[Finding, ...]

    def blocking(self, contract_allowed: bool = False) -> list[Finding]:
        """Findings that stop approval. Contract-phase ones stop it unless the deploy is a
        `--contract` deploy after blue is retired."""
        return [
            f
            for f in self.findings
            if f.severity == BLOCK and not (contract_allowed and f.phase == CONTRACT)
        ]

    def warnings(self, contract_allowed: bool = False) -> list[Finding]:
        """Findings shown but not blocking; allowed contract changes are shown here."""
        return [
            f
            for f in self.findings
            if f.severity == WARN or (contract_allowed and f.phase == CONTRACT)
        ]

    @property
    def has_contract(self) -> bool:
        return any(f.phase == CONTRACT for f in self.findings)

    @property
    def parse_errors(self) -> list[Finding]:
        return [f for f in self.findings if f.phase == PARSE]


# -- what each squawk rule means for blue ---------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    phase: str  # lock | contract | advice
    message: str
    fix: str

    @property
    def severity(self) -> str:
        return WARN if self.phase == ADVICE else BLOCK


def _lock(message: str, fix: str) -> Verdict:
    return Verdict(LOCK, message, fix)


def _contract(message: str, fix: str) -> Verdict:
    return Verdict(CONTRACT, message, fix)


def _advice(message: str, fix: str) -> Verdict:
    return Verdict(ADVICE, message, fix)


_AFTER_BLUE = "in a later deploy with --contract, after blue (the version that still uses it) is retired"


def _drop(thing: str) -> Verdict:
    return _contract(
        f"blue may still use this {thing}: dropping it breaks blue's queries the moment the migration commits",
        f"stop using the {thing} in one deploy; drop it {_AFTER_BLUE}",
    )


def _rename(what: str) -> Verdict:
    return _contract(
        f"blue still uses the old {what}: its queries fail as soon as the change commits",
        "create the new name beside the old one, move the code over, and remove the old name "
        + _AFTER_BLUE,
    )


# Every rule squawk 2.70 knows, mapped on purpose. `None`: satisfied by recess's runner, dropped.
# Phases: lock (always blocks: blue waits on a lock or a rewrite, or blue breaks in a way no
# flag makes safe), contract (blocks unless the deploy is a --contract deploy after blue is
# retired), advice (warns). Failures PostgreSQL itself rejects at once only warn: the migrate step
# fails, the deploy stops and blue never noticed.
RULES: dict[str, Verdict | None] = {
    # Lock and rewrite hazards.
    "require-concurrent-index-creation": _lock(
        "CREATE INDEX without CONCURRENTLY blocks every write to the table until the index is built: blue's inserts and updates stall",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS ..., in a migration file of its own, outside a transaction",
    ),
    "require-concurrent-index-deletion": _lock(
        "DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock: blue's reads and writes on the table queue behind it",
        "DROP INDEX CONCURRENTLY IF EXISTS ..., outside a transaction",
    ),
    "require-concurrent-reindex": _lock(
        "REINDEX without CONCURRENTLY blocks blue's writes to the table, and its reads through that index, for the whole rebuild",
        "REINDEX ... CONCURRENTLY (PostgreSQL 12+), outside a transaction",
    ),
    "require-concurrent-partition-detach": _lock(
        "DETACH PARTITION without CONCURRENTLY takes an ACCESS EXCLUSIVE lock on the parent table: blue's queries on it wait",
        "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY (PostgreSQL 14+), outside a transaction",
    ),
    "constraint-missing-not-valid": _lock(
        "the new constraint is checked against every existing row while a lock blocks blue's writes (and its reads, if validated in the same transaction)",
        "ADD CONSTRAINT ... NOT VALID in one migration; VALIDATE CONSTRAINT in a separate statement outside that transaction (its own file)",
    ),
    "adding-foreign-key-constraint": _lock(
        "adding a foreign key scans the table while locking it and the referenced table against blue's writes",
        "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID; then VALIDATE CONSTRAINT in a separate migration",
    ),
    "adding-not-nullable-field": _lock(
        "SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock: blue can neither read nor write it until the scan ends",
        "ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID; later VALIDATE CONSTRAINT c, then SET NOT NULL (no scan on PostgreSQL 12+) and DROP CONSTRAINT c",
    ),
    "adding-required-field": _lock(
        "a NOT NULL column without a default fails on a table with rows, and blue's INSERTs, which do not set it, would be rejected",
        "add the column nullable (or with a constant DEFAULT); make it NOT NULL in a later deploy, once every running version writes it",
    ),
    "adding-field-with-default": _lock(
        "this default (volatile, stored generated, or any default before PostgreSQL 11) rewrites the whole table under an ACCESS EXCLUSIVE lock: blue is locked out meanwhile",
        "add the column without that default, SET DEFAULT for new rows, and backfill existing rows in small batches",
    ),
    "changing-column-type": _lock(
        "changing a column's type rewrites the table under an ACCESS EXCLUSIVE lock, and blue still reads and writes the old type",
        "add a column of the new type, write both from the new version, backfill in batches, switch reads, and drop the old column with --contract later",
    ),
    "disallowed-unique-constraint": _lock(
        "adding a UNIQUE constraint builds its index under an ACCESS EXCLUSIVE lock: blue cannot read or write the table meanwhile",
        "CREATE UNIQUE INDEX CONCURRENTLY ...; then ADD CONSTRAINT ... UNIQUE USING INDEX ...",
    ),
    "adding-serial-primary-key-field": _lock(
        "adding a primary key builds its index under an ACCESS EXCLUSIVE lock: blue cannot read or write the table meanwhile",
        "CREATE UNIQUE INDEX CONCURRENTLY ...; then ADD CONSTRAINT ... PRIMARY KEY USING INDEX ...",
    ),
    "ban-alter-domain-with-add-constraint": _lock(
        "a new domain constraint is checked against every column of that domain while their tables are locked against blue",
        "use a table CHECK constraint instead: add it NOT VALID, validate it in a separate migration",
    ),
    "ban-truncate-cascade": _lock(
        "TRUNCATE ... CASCADE empties every table that references this one, under ACCESS EXCLUSIVE locks, while blue serves from them",
        "delete exactly the rows you mean, in batches; never cascade a truncate in a deploy",
    ),
    "ban-uncommitted-transaction": _lock(
        "the file opens a transaction it never ends: its locks stay held (blue queues behind them) until the session closes and everything rolls back",
        "end the file with COMMIT, or leave transactions to the migration tool",
    ),
    "prefer-repack": _lock(
        "CLUSTER / VACUUM FULL rewrites the table under an ACCESS EXCLUSIVE lock: blue is locked out for the whole rewrite",
        "REPACK (CONCURRENTLY) ... (PostgreSQL 19+)",
    ),
    # Contract changes: safe only once no running version uses the old shape.
    "ban-drop-column": _drop("column"),
    "ban-drop-table": _drop("table"),
    "ban-drop-view": _drop("view"),
    "ban-drop-function": _drop("function"),
    "ban-drop-type": _drop("type"),
    "ban-drop-schema": _drop("schema"),
    "ban-drop-sequence": _drop("sequence"),
    "ban-drop-domain": _drop("domain"),
    "ban-drop-extension": _drop("extension (and the functions and types it brings)"),
    "ban-drop-database": _contract(
        "dropping a database destroys everything blue serves",
        "never in an application migration; an operator does it by hand once the service is gone",
    ),
    "renaming-column": _rename("column name"),
    "renaming-table": _rename("table name"),
    "renaming-object": _rename("name (index, view, sequence, type or enum value)"),
    "ban-set-schema": _rename("schema-qualified name"),
    "ban-drop-generated-expression": _contract(
        "blue reads values computed by this generated column; after DROP EXPRESSION new rows get none",
        "write the values from the application first; drop the expression " + _AFTER_BLUE,
    ),
    "ban-drop-default": _contract(
        "blue's INSERTs may rely on this default: without it they write NULL or fail",
        "deploy code that always sets the value first; drop the default " + _AFTER_BLUE,
    ),
    "ban-alter-identity": _contract(
        "changing identity changes how ids are generated: blue's INSERTs that set or omit the id may start failing",
        "move the code to the new way of generating ids first; change the identity " + _AFTER_BLUE,
    ),
    "ban-revoke": _contract(
        "blue's database role may still need this privilege: its queries fail once it is revoked",
        "revoke " + _AFTER_BLUE,
    ),
    # Satisfied by the runner: every migration session gets lock_timeout and statement_timeout
    # through PGOPTIONS (see migration_env), so a SET in the file would only repeat it.
    "require-lock-timeout": None,
    "require-statement-timeout": None,
    "require-timeout-settings": None,
    # Advice: blue is not hurt, or the risk depends on code the lint cannot see.
    "prefer-robust-stmts": _advice(
        "not rerunnable: if the migration stops part-way, running it again fails here",
        "use IF NOT EXISTS / IF EXISTS",
    ),
    "prefer-bigint-over-int": _advice(
        "a 32-bit integer key can run out; widening it later is a table rewrite while blue serves",
        "use bigint now",
    ),
    "prefer-bigint-over-smallint": _advice(
        "a 16-bit integer can run out; widening it later is a table rewrite while blue serves",
        "use bigint (or integer) now",
    ),
    "prefer-identity": _advice(
        "serial columns make ownership and permissions of their sequence awkward in later migrations",
        "use bigint GENERATED BY DEFAULT AS IDENTITY",
    ),
    "prefer-text-field": _advice(
        "changing a varchar(n) limit later takes an ACCESS EXCLUSIVE lock while blue serves",
        "use text, with a CHECK (length(col) <= n) constraint if a limit matters",
    ),
    "prefer-timestamp-tz": _advice(
        "timestamp without time zone drops the offset; schools in several timezones read it differently",
        "use timestamptz",
    ),
    "ban-char-field": _advice(
        "char(n) pads values with spaces, which surprises application code",
        "use text (or varchar)",
    ),
    "require-enum-value-ordering": _advice(
        "ADD VALUE without BEFORE/AFTER puts the value last, which may not be the order the code sorts by",
        "say where the value goes: ADD VALUE 'x' BEFORE 'y' (or AFTER)",
    ),
    "identifier-too-long": _advice(
        "PostgreSQL cuts names longer than 63 bytes; later migrations that use the full name will not find it",
        "use a name of at most 63 bytes",
    ),
    "transaction-nesting": _advice(
        "BEGIN/COMMIT here does not match the transaction the file runs in; statements may not be atomic as intended",
        "leave transactions to the migration tool, or use exactly one BEGIN ... COMMIT per file",
    ),
    "ban-create-domain-with-constraint": _advice(
        "a domain with a constraint is hard to change later without locking every table that uses it",
        "use a plain type with table CHECK constraints",
    ),
    "ban-concurrent-index-creation-in-transaction": _advice(
        "PostgreSQL refuses CONCURRENTLY inside a transaction: the migrate step will fail and the deploy stop (blue is unaffected)",
        "put the CREATE INDEX CONCURRENTLY in a file of its own that runs outside a transaction",
    ),
    "ban-duplicate-column-assignments": _advice(
        "PostgreSQL rejects an UPDATE that sets the same column twice: the migrate step will fail and the deploy stop",
        "set each column once",
    ),
    "ban-drop-not-null": _advice(
        "once newer code stops writing this column, blue may read NULLs from it",
        "make sure the version being retired tolerates NULL here before green stops writing it",
    ),
    "ban-drop-constraint": _advice(
        "blue keeps working (a dropped constraint rejects nothing), but rows it assumes valid may no longer be",
        "drop a constraint only once no running version relies on it",
    ),
    "unused-ignore": _advice(
        "a squawk-ignore comment names a rule that does not exist",
        "fix or remove the rule name in the comment",
    ),
    # Opt-in squawk rules recess turns on (see OPT_IN): changes blue sees at once.
    "ban-new-write-restriction": _advice(
        "blue's writes that break the new rule will be rejected (even NOT VALID checks new rows)",
        "add it only once the version now live already writes rows that satisfy it",
    ),
    "ban-drop-index": _advice(
        "blue's queries that use this index fall back to slower plans; a unique index also takes its guarantee with it",
        "drop an index only once no running version's queries need it",
    ),
    "ban-drop-trigger": _advice(
        "blue's writes stop firing this trigger the moment the migration commits",
        "move what the trigger does into the application first, or keep it until blue is retired",
    ),
    "ban-disable-trigger": _advice(
        "blue's writes stop firing these triggers while they are disabled",
        "keep triggers enabled while blue serves; move their work into the application first",
    ),
    "ban-set-default": _advice(
        "blue's INSERTs that omit this column start getting the new default at once",
        "make sure the new default is right for the code blue runs too",
    ),
    "ban-add-enum-value": _advice(
        "green may write the new value while blue, which does not know it, reads it",
        "ship code that accepts the value before code that writes it",
    ),
    "ban-add-composite-attribute": _advice(
        "blue receives composite values with an attribute it does not know",
        "make sure the version now live ignores unknown attributes",
    ),
    "ban-replace-view-function": _advice(
        "blue uses this view or function too: the replacement changes what blue sees at once",
        "keep the replacement compatible with blue, or create it under a new name",
    ),
    "ban-alter-generated-expression": _advice(
        "blue reads this generated column; its values change for new rows at once",
        "make sure blue's code accepts the new values",
    ),
    "ban-detach-inheritance": _advice(
        "blue reading and writing through the parent table stops seeing the detached rows",
        "move the code off the parent table first",
    ),
    "ban-alter-sequence-values": _advice(
        "the ids blue's INSERTs get from this sequence change at once",
        "make sure no running version depends on the sequence's old range or step",
    ),
    "ban-alter-extension": _advice(
        "updating an extension can change or remove functions blue calls",
        "check the extension's release notes against the version now live",
    ),
    "ban-create-policy": _advice(
        "a new row-level security policy changes which rows blue's sessions can see or write",
        "make sure blue's role and queries still pass the policy",
    ),
    "ban-drop-policy": _advice(
        "dropping a policy changes which rows blue's sessions can see or write",
        "make sure no running version relies on the policy",
    ),
    "ban-alter-policy-condition": _advice(
        "a changed policy condition changes which rows blue's sessions can see or write",
        "make sure blue's queries still pass the new condition",
    ),
    "ban-alter-policy-roles": _advice(
        "changed policy roles change which rows blue's sessions can see or write",
        "make sure blue's role is still covered",
    ),
    "ban-alter-row-level-security": _advice(
        "turning row level security on or off changes what blue's sessions see at once (with no policy, they see no rows)",
        "create the policies first, check blue's role against them, then enable",
    ),
    "ban-alter-function-options": _advice(
        "changed function options (volatility, security, settings) apply to blue's calls at once",
        "make sure blue's use of the function still holds",
    ),
    "ban-alter-view-options": _advice(
        "changed view options apply to blue's queries at once",
        "make sure blue's queries still behave",
    ),
    "ban-alter-role-options": _advice(
        "changed role settings apply to blue's new sessions too",
        "change role settings outside a deploy, deliberately",
    ),
    "ban-alter-database-options": _advice(
        "changed database settings apply to blue's new sessions too",
        "change database settings outside a deploy, deliberately",
    ),
    "ban-alter-system-options": _advice(
        "ALTER SYSTEM changes the server for every session, blue's included (and cannot run in a transaction)",
        "change server settings outside a deploy, deliberately",
    ),
}

# squawk's prefer-robust-stmts also fires on a statement with no IF [NOT] EXISTS form outside a
# transaction; the advice differs.
_OUTSIDE_TRANSACTION = _advice(
    "outside a transaction, with no IF [NOT] EXISTS form: if the migration stops part-way, a rerun may fail here",
    "wrap the file in BEGIN ... COMMIT (not for CONCURRENTLY statements), or make sure a rerun is harmless",
)

# Opt-in squawk rules recess turns on: each warns about something blue sees the moment the
# migration commits. Left off on purpose: ban-add-column (adding columns *is* the expand step),
# ban-replica-identity (affects logical replication, not blue), require-table-schema (style).
OPT_IN = (
    "ban-new-write-restriction",
    "ban-drop-index",
    "ban-drop-trigger",
    "ban-disable-trigger",
    "ban-set-default",
    "ban-add-enum-value",
    "ban-add-composite-attribute",
    "ban-replace-view-function",
    "ban-alter-generated-expression",
    "ban-detach-inheritance",
    "ban-alter-sequence-values",
    "ban-alter-extension",
    "ban-create-policy",
    "ban-drop-policy",
    "ban-alter-policy-condition",
    "ban-alter-policy-roles",
    "ban-alter-row-level-security",
    "ban-alter-function-options",
    "ban-alter-view-options",
    "ban-alter-role-options",
    "ban-alter-database-options",
    "ban-alter-system-options",
    "ban-revoke",
)
NOT_ENABLED = ("ban-add-column", "ban-replica-identity", "require-table-schema")
SATISFIED_BY_RUNNER = tuple(rule for rule, verdict in RULES.items() if verdict is None)
# The alias expands to the two rules above; squawk's --exclude takes only the real names.
_EXCLUDE = ("require-lock-timeout", "require-statement-timeout")

SYNTAX_FIX = "fix the SQL so PostgreSQL accepts it (try it with psql against a scratch database)"


# -- the linter binary ----------------------------------------------------------------------------


def check_linter() -> str:
    """Path of a usable squawk (next to this Python first, then on PATH). Called at start-up.

    Raises LintUsageError saying how to install it.
    """
    beside = Path(sys.executable).parent / "squawk"
    found = str(beside) if beside.is_file() else shutil.which("squawk")
    if not found:
        raise LintUsageError(f"the squawk linter is not installed: {INSTALL_HINT}")
    try:
        out = subprocess.run(
            [found, "--version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        raise LintUsageError(f"cannot run {found}: {exc.strerror}; {INSTALL_HINT}") from None
    except subprocess.TimeoutExpired:
        raise LintUsageError(f"{found} --version did not answer within 30 s") from None
    m = re.search(r"(\d+)\.(\d+)", out.stdout)
    if out.returncode != 0 or not m:
        raise LintUsageError(f"{found} --version failed: {(out.stderr or out.stdout).strip()[:200]}")
    version = (int(m.group(1)), int(m.group(2)))
    if version < MIN_SQUAWK:
        raise LintUsageError(
            f"{found} is squawk {m.group(0)}; recess needs {MIN_SQUAWK[0]}.{MIN_SQUAWK[1]} or newer: {INSTALL_HINT}"
        )
    return found


_linter: str | None = None


def _squawk() -> str:
    global _linter
    if _linter is None or not Path(_linter).exists():
        _linter = check_linter()
    return _linter


# -- reading the input ----------------------------------------------------------------------------


def _is_sql(path: Path) -> bool:
    return path.suffix.lower() == ".sql"


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files to lint, in order: a directory means its *.sql files in name order (not recursive,
    dotfiles skipped). Raises LintUsageError for a missing path, a non-SQL file, or a directory
    without SQL files."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                (c for c in p.iterdir() if c.is_file() and _is_sql(c) and not c.name.startswith(".")),
                key=lambda c: c.name,
            )
            if not found:
                raise LintUsageError(f"{p}: no .sql files in this directory")
            out.extend(found)
        elif p.is_file():
            if not _is_sql(p):
                raise LintUsageError(f"{p}: not an SQL file (expected a name ending in .sql)")
            out.append(p)
        elif p.exists():
            raise LintUsageError(f"{p}: not a file or directory")
        else:
            raise LintUsageError(f"{p}: no such file or directory")
    unique: dict[str, Path] = {}
    for p in out:
        unique.setdefault(str(p), p)
    return list(unique.values())


def _read_sql(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LintUsageError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LintUsageError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise LintUsageError(f"{path}: empty file (a migration needs at least one statement)")
    return text


_IGNORE = re.compile(r"squawk-ignore(?P<file>-file)?(?P<rules>[^\n]*)")


def _blocks(rule: str) -> bool:
    verdict = RULES.get(rule)
    return verdict is not None and verdict.phase != ADVICE


def _keep_only_advice_ignores(sql: str) -> str:
    """squawk-ignore comments may silence advice, never a blocking rule.

    squawk applies `-- squawk-ignore RULE` itself, so the copy it reads has blocking rule names
    taken out of those comments (an ignore of everything becomes an ignore of all advice). The
    rewrite stays on the comment's line, so reported lines do not move.
    """

    def rewrite(m: re.Match[str]) -> str:
        rest = m.group("rules")
        cut = min((i for i in (rest.find("--"), rest.find("*/")) if i >= 0), default=len(rest))
        names = [n.strip() for n in rest[:cut].split(",") if n.strip()]
        if not names:
            kept = [r for r, v in RULES.items() if v is not None and v.phase == ADVICE and r != "unused-ignore"]
        else:
            kept = [n for n in names if not _blocks(n)]
        keyword = "squawk-ignore" + (m.group("file") or "") if kept else "recess-dropped-ignore"
        return f"{keyword} {', '.join(kept)}{rest[cut:]}"

    return _IGNORE.sub(rewrite, sql)


# -- linting --------------------------------------------------------------------------------------


def _harmless_to_blue(rule: str, violation: Mapping[str, Any]) -> bool:
    # A constraint on a column added in the same statement cannot reject blue's writes: blue does
    # not know the column, so its INSERTs leave it to the default (a NOT NULL column without one
    # is adding-required-field, which blocks on its own).
    message = str(violation.get("message", "")).lower()
    return rule == "ban-new-write-restriction" and "new column constraint" in message


def _finding(file: str, line: int, rule: str, violation: Mapping[str, Any]) -> Finding | None:
    if _harmless_to_blue(rule, violation):
        return None
    if rule in RULES:
        verdict = RULES[rule]
        if verdict is None:
            return None
        if rule == "prefer-robust-stmts" and "transaction" in str(violation.get("message", "")).lower():
            verdict = _OUTSIDE_TRANSACTION
        return Finding(file, line, rule, verdict.severity, verdict.message, verdict.fix, verdict.phase)
    # A rule newer than this table: shown, never silently dropped, and never blocking on its own.
    message = " ".join(str(violation.get("message") or rule).split())
    fix = " ".join(str(violation.get("help") or f"see https://squawkhq.com/docs/{rule}").split())
    return Finding(file, line, rule, WARN, message, fix, ADVICE)


def lint_paths(paths: Sequence[str | Path], pg_version: int = 15) -> LintReport:
    """Lints SQL files (a directory means its *.sql files in name order) in one squawk run."""
    files = expand_paths(paths)
    if not files:
        return LintReport(files=(), findings=())
    texts = [_read_sql(p) for p in files]
    names = [str(p) for p in files]
    squawk = _squawk()
    with tempfile.TemporaryDirectory(prefix="recess-lint-") as tmp:
        # squawk reads copies with plain names in a folder of its own: no glob surprises in real
        # names, no stray .squawk.toml found by walking up from the working directory, and the
        # text linted is exactly the text checked above.
        config = Path(tmp, "squawk.toml")
        config.write_text("# recess passes every setting on the command line\n")
        copies = []
        for i, text in enumerate(texts):
            copy = f"{i:05d}.sql"
            Path(tmp, copy).write_text(_keep_only_advice_ignores(text), encoding="utf-8")
            copies.append(copy)
        cmd = [
            squawk,
            "--config", str(config),
            "--reporter", "json",
            "--pg-version", str(pg_version),
            "--no-assume-in-transaction",
            "--exclude", ",".join(_EXCLUDE),
            "--include", ",".join(OPT_IN),
            *copies,
        ]
        try:
            proc = subprocess.run(
                cmd, cwd=tmp, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise LintUsageError("squawk did not finish within 300 s") from None
    # squawk exits 1 whenever it reports anything, warnings included: the JSON is the answer.
    if proc.returncode not in (0, 1):
        raise LintUsageError(f"squawk failed (exit {proc.returncode}): {proc.stderr.strip()[:500]}")
    try:
        violations = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        raise LintUsageError(f"squawk answered something other than JSON: {proc.stdout[:200]!r}") from None

    by_copy = dict(zip(copies, names, strict=True))
    order = {name: i for i, name in enumerate(names)}
    findings: dict[tuple[str, int, str], Finding] = {}
    unparsable: set[str] = set()
    for v in violations:
        file = by_copy.get(Path(str(v.get("file", ""))).name)
        if file is None:
            continue
        line = int(v.get("line", 0)) + 1  # squawk counts lines from 0
        rule = str(v.get("rule_name", ""))
        if rule == "syntax-error":
            if file in unparsable:  # the first error is the one to fix; the rest follow from it
                continue
            unparsable.add(file)
            message = " ".join(str(v.get("message", "")).split())
            f = Finding(file, line, rule, BLOCK, f"does not parse: {message}", SYNTAX_FIX, PARSE)
        else:
            f = _finding(file, line, rule, v)
        if f is not None:
            findings.setdefault((f.file, f.line, f.rule), f)
    ranked = sorted(
        findings.values(),
        key=lambda f: (order[f.file], f.line, f.severity != BLOCK, f.rule),
    )
    return LintReport(files=tuple(names), findings=tuple(ranked))


def pending_migrations(folder: Path, applied: set[str]) -> list[Path]:
    """The folder's *.sql files whose name is not in `applied`, in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise LintUsageError(f"migrations folder {folder} {what}")
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and _is_sql(p) and not p.name.startswith(".") and p.name not in applied
        ),
        key=lambda p: p.name,
    )


# -- the CLI: `recess migrations lint` ------------------------------------------------------------

USAGE = "recess migrations lint [--pg-version N] [--format text|json] PATH..."


class _CliExit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that writes to the given streams and never calls sys.exit."""

    def __init__(self, stdout: IO[str], stderr: IO[str]) -> None:
        super().__init__(
            prog="recess migrations lint",
            usage=USAGE,
            description="Lint SQL migrations for what breaks blue while green migrates.",
            epilog="Exit 0: nothing blocks; 1: at least one blocking finding; 2: usage error or SQL that does not parse.",
        )
        self._out, self._err = stdout, stderr

    def _print_message(self, message: str, file: IO[str] | None = None) -> None:
        if message:
            (self._err if file is sys.stderr else self._out).write(message)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            self._err.write(message)
        raise _CliExit(status)

    def error(self, message: str) -> None:  # type: ignore[override]
        self._err.write(f"usage: {USAGE}\n{self.prog}: error: {message}\n")
        raise _CliExit(2)


def _pg_version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a PostgreSQL major version like 15, got {text!r}") from None
    if not 9 <= value <= 30:
        raise argparse.ArgumentTypeError(f"expected a PostgreSQL major version from 9 to 30, got {value}")
    return value


def format_text(report: LintReport) -> str:
    lines = []
    for f in report.findings:
        lines.append(f"{f.file}:{f.line}  {f.severity.upper()}  {f.rule}  {f.message}")
        lines.append(f"    fix: {f.fix}")
    blocking = len(report.blocking())
    warnings = len(report.warnings())
    n = len(report.files)
    lines.append(
        f"{n} file{'s' if n != 1 else ''} linted: {blocking} blocking, {warnings} warning{'s' if warnings != 1 else ''}"
    )
    return "\n".join(lines) + "\n"


def lint_cli(argv: Sequence[str], stdout: IO[str], stderr: IO[str]) -> int:
    """`recess migrations lint [--pg-version N] [--format text|json] PATH...` (argv: after `lint`).

    Exit 0: nothing blocks; 1: at least one blocking finding; 2: usage error or SQL that does not
    parse. Contract changes always block here: `--contract` is a deploy decision, not a lint one.
    """
    parser = _Parser(stdout, stderr)
    parser.add_argument("--pg-version", type=_pg_version, default=15, metavar="N", help="PostgreSQL major version of the target database (default: 15)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or json: a list of findings")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="SQL files, or directories of them")
    try:
        args = parser.parse_args(list(argv))
    except _CliExit as exc:
        return exc.code
    try:
        report = lint_paths(args.paths, pg_version=args.pg_version)
    except LintUsageError as exc:
        stderr.write(f"recess migrations lint: {exc}\n")
        return 2
    if args.format == "json":
        stdout.write(json.dumps([f.to_json() for f in report.findings], indent=2) + "\n")
    else:
        stdout.write(format_text(report))
    for f in report.parse_errors:
        stderr.write(f"{f.file}:{f.line}: {f.message}\n")
    if report.parse_errors:
        return 2
    return 1 if report.blocking() else 0


# -- the runner -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationRun:
    ok: bool
    attempts: int
    lock_timeouts: int
    output: str  # every attempt's output, each trimmed, with a header per attempt
    summary: str  # one line for the deploy thread


LOCK_TIMEOUT = re.compile(
    r"canceling statement due to lock timeout|\b55P03\b|LockNotAvailable|lock_not_available",
    re.IGNORECASE,
)
MAX_OUTPUT = 12_000


def _milliseconds(d: dt.timedelta) -> int:
    # 0 would mean "no timeout" to PostgreSQL: the opposite of what a tiny value asks for.
    return max(1, round(d.total_seconds() * 1000))


def migration_env(runner: MigrationRunner) -> dict[str, str]:
    """Extra environment for the migrate command: any libpq-based tool (psql, psycopg, most
    migration tools) applies these settings to its sessions."""
    return {
        "PGOPTIONS": (
            f"-c lock_timeout={_milliseconds(runner.lock_timeout)}ms "
            f"-c statement_timeout={_milliseconds(runner.statement_timeout)}ms"
        )
    }


def _trim(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - limit} characters left out ...]\n{text[-tail:]}"


def _last_error_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "error" in ln.lower()]
    line = (errors or lines or ["no output"])[-1]
    return line if len(line) <= 200 else line[:197] + "..."


def run_migrations(
    migrate: Callable[[Mapping[str, str]], Result],
    runner: MigrationRunner,
    sleep: Callable[[float], None] = time.sleep,
) -> MigrationRun:
    """Runs `migrate(env)` with the session timeouts; a lock timeout is retried with exponential
    backoff (runner.retry_backoff, doubled each time) up to runner.retries tries in all. Any other
    failure is final at once: retrying a broken migration only repeats it."""
    env = migration_env(runner)
    tries = max(1, runner.retries)
    per_attempt = max(1000, MAX_OUTPUT // tries)
    sections: list[str] = []
    lock_timeouts = 0
    result = Result(ok=False)
    for attempt in range(1, tries + 1):
        try:
            result = migrate(env)
        except Exception as exc:  # a driver that raises fails the step like one that returns
            detail = getattr(exc, "output", "") or ""
            result = Result(ok=False, output=f"{type(exc).__name__}: {exc}\n{detail}".strip())
        timed_out = not result.ok and bool(LOCK_TIMEOUT.search(result.output or ""))
        outcome = "ok" if result.ok else ("lock timeout" if timed_out else "failed")
        code = "" if result.exit_code is None else f", exit {result.exit_code}"
        sections.append(
            f"--- attempt {attempt} of {tries}: {outcome}{code} ---\n{_trim((result.output or '').rstrip(), per_attempt)}"
        )
        output = "\n".join(sections)
        if result.ok:
            retried = f" after {lock_timeouts} lock timeout{'s' if lock_timeouts != 1 else ''}" if lock_timeouts else ""
            return MigrationRun(True, attempt, lock_timeouts, output, f"migrations applied{retried} ({attempt} attempt{'s' if attempt != 1 else ''})")
        if not timed_out:
            exit_part = "" if result.exit_code is None else f" (exit {result.exit_code})"
            summary = f"migration failed{exit_part}: {_last_error_line(result.output or '')}"
            return MigrationRun(False, attempt, lock_timeouts, output, summary)
        lock_timeouts += 1
        if attempt < tries:
            sleep(runner.retry_backoff.total_seconds() * 2 ** (attempt - 1))
    limit = format_duration(runner.lock_timeout)
    return MigrationRun(
        False,
        tries,
        lock_timeouts,
        "\n".join(sections),
        f"migration gave up after {lock_timeouts} lock timeouts: another session held a lock it needed "
        f"for longer than lock_timeout ({limit}) each time; queries queued behind it waited at most that long",
    )
