"""/flag: list, show and change feature flags; scheduled changes wait for the next safe window.

At registration the config's [flags.defaults] are created if absent, and every change still
scheduled in SQLite is armed again on the runtime's scheduler.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from slack_bolt import App

from bot.acks import answer
from bot.listeners.text import ParseError, parse_id, split_args
from bot.runtime import Runtime, user_timezone
from bot.views import flags as views
from bot.views.common import ephemeral, usage_reply
from commands.flags import Applied, Change, FlagBook, FlagError, Scope, Unchanged, check_key
from commands.freezes import current_calendar

log = logging.getLogger("recess.flags")

MAX_NOTE = 500
_PERCENT = re.compile(r"([0-9]{1,3})%?")  # ASCII digits only (\d would read "٢٥" as 25)
_CHANGES = ("on", "off", "rollout", "kill", "unkill", "clear", "create")


@dataclass
class FlagCommand:
    sub: str
    args: list[str] = field(default_factory=list)
    note: str | None = None
    at_window: bool = False


def parse(text: str) -> FlagCommand:
    """Splits the text into the subcommand, its words, and the --note/--at-window options."""
    tokens = split_args(text)
    words: list[str] = []
    note, at_window = None, False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--note":
            # The note is every word up to the next option, quoted or not: `--note grades page 500s`.
            i += 1
            words_of_note = []
            while i < len(tokens) and not tokens[i].startswith("--"):
                words_of_note.append(tokens[i])
                i += 1
            if not words_of_note:
                raise ParseError('`--note` needs a text, e.g. `--note pilot at Lincoln`')
            note = " ".join(words_of_note)
            continue
        if token.startswith("--note="):
            note = token[len("--note=") :]
        elif token == "--at-window":
            at_window = True
        elif token.startswith("--"):
            raise ParseError(f"unknown option `{token}`")
        else:
            words.append(token)
        i += 1
    if note is not None:
        note = note.strip()
        if not note:
            raise ParseError("`--note` is empty")
        if len(note) > MAX_NOTE:
            raise ParseError(f"keep the note under {MAX_NOTE} characters")
    if not words:
        return FlagCommand("", [], note, at_window)
    return FlagCommand(words[0].lower(), words[1:], note, at_window)


def parse_percentage(text: str) -> int:
    match = _PERCENT.fullmatch(text)
    if not match or int(match.group(1)) > 100:
        raise ParseError(f"`{text[:20]}` is not a percentage: give a whole number from 0 to 100, e.g. `25`")
    return int(match.group(1))


def parse_scope(words: list[str], *, allow_by: bool = False) -> tuple[Scope, str | None]:
    """`tenant=ID`, `role=NAME` (each at most once), and with `allow_by`, `by=user|tenant`."""
    found: dict[str, str] = {}
    allowed = ("tenant", "role", "by") if allow_by else ("tenant", "role")
    for word in words:
        name, eq, value = word.partition("=")
        name = name.lower()
        if not eq or name not in allowed:
            raise ParseError(f"unexpected `{word}`: a scope is `tenant=ID` and/or `role=NAME`")
        if not value:
            raise ParseError(f"`{word}` needs a value after `=`")
        if name in found:
            raise ParseError(f"`{name}=` given twice")
        found[name] = value
    return Scope(found.get("tenant", ""), found.get("role", "")), found.get("by")


def change_from(cmd: FlagCommand) -> Change:
    """The Change a /flag on|off|rollout|kill|unkill|clear|create command asks for."""
    sub, args = cmd.sub, cmd.args
    if not args:
        raise ParseError(f"`/flag {sub}` needs a flag KEY")
    key = args[0]
    if sub == "create":
        if len(args) < 2:
            raise ParseError('`/flag create` needs a KEY and a "DESCRIPTION"')
        return Change("create", key, description=" ".join(args[1:]))
    if sub in ("kill", "unkill"):
        if len(args) > 1:
            raise ParseError(f"`/flag {sub}` takes only the flag KEY: the kill switch covers everyone")
        return Change(sub, key)
    if sub == "rollout":
        if len(args) < 2:
            raise ParseError("`/flag rollout` needs a KEY and a percentage, e.g. `/flag rollout KEY 25`")
        scope, by = parse_scope(args[2:], allow_by=True)
        return Change("rollout", key, scope, pct=parse_percentage(args[1]), by=by)
    scope, _ = parse_scope(args[1:])
    return Change(sub, key, scope)


def handle_flag(rt: Runtime, user: str, text: str) -> dict[str, Any]:
    try:
        cmd = parse(text)
    except ParseError as exc:
        return usage_reply(str(exc), views.FLAG_USAGE)
    book = FlagBook.for_store(rt.store)
    command = f"/flag {text.strip()}"
    try:
        if cmd.sub in ("", "help", "-h", "--help"):
            return ephemeral(f"```{views.FLAG_USAGE}```")
        if cmd.sub == "list":
            if cmd.args:
                raise ParseError("`/flag list` takes no arguments")
            return views.list_reply(book.flags(), book.last_changes())
        if cmd.sub in ("show", "history"):
            if len(cmd.args) != 1:
                raise ParseError(f"`/flag {cmd.sub}` needs one flag KEY")
            key = cmd.args[0]
            check_key(key)
            flag = book.get(key)
            if flag is None:
                raise FlagError(f"there is no flag `{key}`; `/flag list` shows the flags")
            if cmd.sub == "history":
                return views.history_reply(key, book.history(key))
            return views.show_reply(flag, book.history(key, limit=5), book.scheduled(key))
        if cmd.sub == "cancel":
            return cancel(rt, book, user, cmd, command)
        if cmd.sub in _CHANGES:
            return change(rt, book, user, cmd, command)
    except Unchanged as exc:
        return ephemeral(f":information_source: {exc}.")
    except (ParseError, FlagError) as exc:
        return usage_reply(str(exc), views.FLAG_USAGE)
    return usage_reply(f"unknown subcommand `{cmd.sub}`", views.FLAG_USAGE)


def change(rt: Runtime, book: FlagBook, user: str, cmd: FlagCommand, command: str) -> dict[str, Any]:
    wanted = change_from(cmd)
    now = rt.now()
    channel = rt.cfg.bot.channel
    if cmd.at_window:
        run_at = current_calendar(rt.cfg, rt.store).next_safe_window(now)
        if run_at is None:
            raise FlagError("there is no safe window within the calendar's horizon; check school hours and freezes")
        scheduled = book.schedule(
            wanted, actor=user, policy=rt.policy, cfg=rt.cfg, command=command, now=now, run_at=run_at, note=cmd.note
        )
        arm(rt, scheduled.id, scheduled.run_at)
        rt.outbox.post(channel, *views.scheduled_announcement(scheduled))
        return views.scheduled_reply(scheduled, user_timezone(rt, user), now)
    applied = apply_change(rt, user, wanted, command, note=cmd.note)
    return views.change_reply(applied, channel)


def apply_change(rt: Runtime, user: str, wanted: Change, command: str, *, note: str | None = None) -> Applied:
    """A flag change now, as `/flag` makes it: policy, write and audit (FlagBook.apply), then the
    announcement in the deploy channel and the `flag.changed` webhook. The dashboard's toggles call
    this too. Raises FlagError."""
    book = FlagBook.for_store(rt.store)
    applied = book.apply(wanted, actor=user, policy=rt.policy, cfg=rt.cfg, command=command, now=rt.now(), note=note)
    rt.outbox.post(rt.cfg.bot.channel, *views.change_announcement(applied))
    announce_flag_change(rt, applied)
    return applied


def announce_flag_change(rt: Runtime, applied: Any) -> None:
    """The `flag.changed` webhook event (bot/webhooks.py), for receivers that asked for it."""
    if rt.webhooks is None or not rt.cfg.webhooks:
        return
    c = applied.change
    try:
        rt.webhooks.flag_changed({"key": c.key, "action": c.action, "scope": {"tenant": c.scope.tenant, "role": c.scope.role},
                                  "pct": c.pct, "actor": applied.actor, "before": applied.before, "after": applied.after,
                                  "note": applied.note, "scheduled_id": applied.scheduled_id})
    except Exception:  # the change is applied and announced in Slack; a lost event is only logged
        log.exception("flag %s: could not queue its flag.changed webhook", c.key)


def cancel(rt: Runtime, book: FlagBook, user: str, cmd: FlagCommand, command: str) -> dict[str, Any]:
    needs = "`/flag cancel` needs one scheduled change ID, e.g. `/flag cancel 3`"
    if len(cmd.args) != 1:
        raise ParseError(needs)
    try:
        change_id = parse_id(cmd.args[0], "scheduled change")
    except ParseError as exc:
        raise ParseError(f"{needs} ({exc})") from None
    scheduled = book.cancel(change_id, actor=user, policy=rt.policy, command=command, now=rt.now(), note=cmd.note)
    job = rt.scheduler.get_job(job_id(change_id))
    if job is not None:
        job.remove()
    rt.outbox.post(rt.cfg.bot.channel, *views.cancelled_announcement(scheduled, user))
    return views.cancelled_reply(scheduled)


# -- scheduled changes --------------------------------------------------------------------------


def job_id(change_id: int) -> str:
    return f"flag-change-{change_id}"


def arm(rt: Runtime, change_id: int, run_at: dt.datetime) -> None:
    """Arms the job that runs a scheduled change at `run_at` on the runtime's clock.

    The scheduler counts real time while domain time is `rt.now()` (a test's clock may differ),
    so the job fires after the same delay: in production the two are the same instant.
    """
    delay = run_at - rt.now()
    fire_at = dt.datetime.now(dt.UTC) + max(delay, dt.timedelta(0))
    rt.scheduler.add_job(
        run_change, "date", run_date=fire_at, args=[rt, change_id], id=job_id(change_id),
        replace_existing=True, misfire_grace_time=None, coalesce=True,
    )


def run_change(rt: Runtime, change_id: int) -> None:
    """The scheduler job: apply the change if the window is still open, else wait again."""
    try:
        book = FlagBook.for_store(rt.store)
        calendar = current_calendar(rt.cfg, rt.store)
        outcome = book.run_scheduled(change_id, cfg=rt.cfg, now=rt.now(), next_safe_window=calendar.next_safe_window)
        if outcome.kind == "rescheduled" and outcome.run_at is not None:
            arm(rt, change_id, outcome.run_at)
        message = views.outcome_announcement(outcome)
        if message is not None:
            rt.outbox.post(rt.cfg.bot.channel, *message)
        if outcome.kind == "applied" and outcome.applied is not None:
            announce_flag_change(rt, outcome.applied)
    except Exception:
        log.exception("scheduled flag change #%s failed to run", change_id)


def rearm(rt: Runtime) -> int:
    """Arms every change still scheduled in SQLite (after a restart). Returns how many."""
    pending = FlagBook.for_store(rt.store).scheduled()
    for s in pending:
        arm(rt, s.id, s.run_at)
    return len(pending)


def register(app: App, rt: Runtime) -> None:
    book = FlagBook.for_store(rt.store)
    seeded = book.seed(rt.cfg.flags.defaults, now=rt.now())
    if seeded:
        log.info("created flags from [flags.defaults]: %s", ", ".join(seeded))
    armed = rearm(rt)
    if armed:
        log.info("re-armed %d scheduled flag change(s)", armed)

    @app.command("/flag")
    def flag_command(ack, command, respond) -> None:  # noqa: ANN001 (Bolt injects by name)
        # Everything, the store's write and the snapshot's rebuild included, runs in the work:
        # the ack never waits for them (bot/acks.py).
        answer(rt, ack, respond, lambda: handle_flag(rt, command["user_id"], command.get("text", "")),
               what="your /flag")
