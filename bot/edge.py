"""The Slack edge: what a request to /slack/events must be before Bolt sees it.

In order, each step answering before the next one runs:

1. Bounded body: over `MAX_SLACK_BODY` (1 MiB) is 413, decided on the declared Content-Length or
   by counting the chunks as they arrive; nothing past the limit is read.
2. Signature (401): recess checks Slack's v0 HMAC itself, on bytes, with `hmac.compare_digest`.
   A timestamp that is not ASCII digits, a signature header with a non-ASCII byte, a body that is
   not UTF-8: each is one refusal and one log line, never a traceback.
3. Shape (400): the payload parsed by its real shape (see `read_body`), and checked field by field where Bolt or
   a listener would index into it (`event_id` a string, `actions` a list of objects, `user` and
   `team` objects, ...).
4. Replays (401): a signature seen before (kept until its timestamp is 5 minutes old, in SQLite, so
   a restart does not forget) is refused. A Slack retry (`X-Slack-Retry-Num`) of a body already
   taken is acknowledged with 200 and not acted on; events are also de-duplicated by `event_id`
   (`redelivered_event`, the Bolt middleware, which covers Socket Mode too).
5. Home workspace: a request from a team that is not the installed one (auth.test at start-up)
   nor in `[access] teams` is answered with an ephemeral refusal (200), and nothing else happens.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from storage import replays

log = logging.getLogger("recess.edge")

MAX_SLACK_BODY = 1024 * 1024
SIGNATURE_TTL = 300  # seconds: Slack's signatures are refused as stale after this
EVENT_TTL = 3600  # seconds: longer than Slack retries an event (at once, +1 min, +5 min)
NOT_HOME = "recess serves only the workspace it is installed in; this request came from another one."

Clock = Callable[[], float]


class Refusal(Exception):
    """An answer to send instead of handing the request on: status and a message for the log."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- 1. bounded bodies ------------------------------------------------------------------------------


async def read_bounded(request: Request, limit: int) -> bytes:
    """The request body, or Refusal(413) as soon as it is known to exceed `limit` bytes: from the
    declared Content-Length before reading anything, else while counting the streamed chunks."""
    declared = request.headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not (declared.isascii() and declared.isdigit()):
            raise Refusal(400, f"Content-Length is not a number: {declared[:20]!r}")
        if int(declared) > limit:
            raise Refusal(413, f"the body is {int(declared)} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refusal(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# -- 2. signatures ----------------------------------------------------------------------------------


def check_signature(secret: str, body: bytes, timestamp: str | None, signature: str | None, *, now: float) -> int:
    """Slack's v0 signature of `body` at `timestamp`; returns the timestamp, or raises Refusal(401).

    Header values arrive decoded as Latin-1, so a non-ASCII byte is a non-ASCII character here:
    it is refused before anything is compared. The comparison is on bytes, in constant time.
    """
    if not secret:
        raise Refusal(401, "no signing secret is configured, so no request can be verified")
    if not timestamp or not signature:
        raise Refusal(401, "the request carries no X-Slack-Request-Timestamp or X-Slack-Signature")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise Refusal(401, f"X-Slack-Request-Timestamp is not a Unix time: {timestamp[:20]!r}")
    ts = int(timestamp)
    if abs(now - ts) > SIGNATURE_TTL:
        raise Refusal(401, f"stale Slack signature: timestamp {ts} is {now - ts:+.0f} s from now")
    if not signature.isascii():
        raise Refusal(401, "X-Slack-Signature has non-ASCII bytes")
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = b"v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(expected, signature.encode("ascii")):
        raise Refusal(401, "invalid Slack signature")
    return ts


# -- 3. shapes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlackRequest:
    """A body that passed the shape checks: its kind, the payload as Bolt parses it, and the teams
    it claims to come from."""

    kind: str  # "command", "interactive", "event", "url_verification", "ssl_check"
    payload: dict[str, Any]
    text: str

    @property
    def teams(self) -> list[str]:
        p = self.payload
        if self.kind == "command":
            return [p["team_id"]]
        if self.kind == "event":
            return [p["team_id"]]
        if self.kind == "interactive":
            found = []
            if isinstance(p.get("team"), dict):
                found.append(p["team"]["id"])
            if isinstance(p.get("user"), dict) and isinstance(p["user"].get("team_id"), str):
                found.append(p["user"]["team_id"])
            return found
        return []

    @property
    def event_id(self) -> str | None:
        return self.payload.get("event_id") if self.kind == "event" else None


def _where(path: str, problem: str) -> Refusal:
    return Refusal(400, f"malformed Slack request: {path} {problem}")


def _string(obj: dict[str, Any], key: str, path: str, *, required: bool = False) -> None:
    if key not in obj or obj[key] is None:
        if required:
            raise _where(f"{path}{key}", "is missing")
        return
    if not isinstance(obj[key], str):
        raise _where(f"{path}{key}", f"must be a string, not {type(obj[key]).__name__}")


def _object(obj: dict[str, Any], key: str, path: str, *, required: bool = False, or_string: bool = False) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _where(f"{path}{key}", "is missing")
        return None
    if or_string and isinstance(value, str):
        return None
    if not isinstance(value, dict):
        raise _where(f"{path}{key}", f"must be an object, not {type(value).__name__}")
    return value


def _bolt_safe(obj: dict[str, Any], path: str) -> None:
    """The fields Bolt's context extraction indexes into (request/internals.py) have the types it
    assumes: objects (or IDs as strings) where it reads `.id`, a list of objects for
    `authorizations` and `response_urls`, strings for IDs."""
    for key in ("enterprise", "team", "user", "channel"):
        _object(obj, key, path, or_string=True)
    for key in ("view", "event", "message", "previous_message", "item", "assistant_thread", "function_data", "container"):
        _object(obj, key, path)
    for key in ("team_id", "user_id", "channel_id", "enterprise_id", "thread_ts", "response_url", "type"):
        _string(obj, key, path)
    for key in ("authorizations", "response_urls"):
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise _where(f"{path}{key}", "must be a list of objects")
    for key in ("team", "user", "channel", "enterprise"):
        value = obj.get(key)
        if isinstance(value, dict):
            _string(value, "id", f"{path}{key}.")
            _string(value, "team_id", f"{path}{key}.")
    if isinstance(obj.get("authorizations"), list) and obj["authorizations"]:
        _bolt_safe(obj["authorizations"][0], f"{path}authorizations[0].")
    for key in ("event", "message", "previous_message", "item", "assistant_thread"):
        if isinstance(obj.get(key), dict):
            _bolt_safe(obj[key], f"{path}{key}.")


def _interactive(payload: dict[str, Any]) -> None:
    user = _object(payload, "user", "", required=True)
    _string(user, "id", "user.", required=True)
    if "team" not in payload:
        raise _where("team", "is missing")
    team = payload["team"]
    if team is None:  # org-wide installs send no team: the user's team says where it came from
        _string(user, "team_id", "user.", required=True)
    else:
        _object(payload, "team", "", required=True)
        _string(team, "id", "team.", required=True)
    if payload["type"] == "block_actions":
        actions = payload.get("actions")
        if not isinstance(actions, list) or not actions:
            raise _where("actions", "must be a non-empty list")
        for i, action in enumerate(actions):
            if not isinstance(action, dict):
                raise _where(f"actions[{i}]", "must be an object")
            _string(action, "action_id", f"actions[{i}].", required=True)
            for key in ("value", "block_id", "action_ts"):
                _string(action, key, f"actions[{i}].")
        container = payload.get("container")
        if isinstance(container, dict):
            _string(container, "message_ts", "container.")
            _string(container, "channel_id", "container.")


def _event(payload: dict[str, Any]) -> None:
    _string(payload, "event_id", "", required=True)
    _string(payload, "team_id", "", required=True)
    _string(payload, "api_app_id", "")
    event = _object(payload, "event", "", required=True)
    _string(event, "type", "event.", required=True)
    for key in ("user", "channel"):
        if not isinstance(event.get(key), str | dict | None):
            raise _where(f"event.{key}", f"must be an ID or an object, not {type(event[key]).__name__}")


def read_body(text: str, content_type: str | None) -> Any:
    """A Slack body as what it is: JSON (events), a form whose `payload` field is JSON (clicks,
    views), or a plain form (slash commands).

    Bolt's own parser decides "payload form" by looking for the word `payload` anywhere in the body,
    so `/deploy web payload-v2` read as an empty click. The server hands Bolt this reading instead.
    """
    media = (content_type or "").split(";")[0].strip().lower()
    if media == "application/json" or text.lstrip().startswith("{"):
        return json.loads(text)
    form = dict(parse_qsl(text, keep_blank_values=True))
    if "payload" in form and "command" not in form:
        return json.loads(form["payload"])
    return form


def parse_slack_request(body: bytes, content_type: str | None) -> SlackRequest:
    """The body as Bolt will read it, checked; raises Refusal(400) naming the first wrong field."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(400, "malformed Slack request: the body is not UTF-8") from None
    if not text:
        raise Refusal(400, "malformed Slack request: the body is empty")
    try:
        payload = read_body(text, content_type)
    except (ValueError, RecursionError):
        raise Refusal(400, "malformed Slack request: the body (or its payload field) is not valid JSON") from None
    if not isinstance(payload, dict) or not payload:
        raise Refusal(400, "malformed Slack request: expected a JSON object, a form with `payload`, or a slash command form")
    _bolt_safe(payload, "")
    if "command" in payload:
        _string(payload, "command", "", required=True)
        if not payload["command"].startswith("/"):
            raise _where("command", "must start with /")
        for key in ("team_id", "user_id", "channel_id"):
            _string(payload, key, "", required=True)
        return SlackRequest("command", payload, text)
    if "ssl_check" in payload:
        return SlackRequest("ssl_check", payload, text)
    _string(payload, "type", "", required=True)
    kind = payload["type"]
    if kind == "url_verification":
        _string(payload, "challenge", "", required=True)
        return SlackRequest("url_verification", payload, text)
    if kind in ("event_callback", "app_rate_limited"):
        if kind == "app_rate_limited":
            _string(payload, "team_id", "", required=True)
            return SlackRequest("event", payload, text)
        _event(payload)
        return SlackRequest("event", payload, text)
    _interactive(payload)
    return SlackRequest("interactive", payload, text)


# -- 4. replays and retries -------------------------------------------------------------------------


class ReplayGuard:
    """Signatures, bodies and event IDs seen lately, in memory and in SQLite (storage/replays.py).

    Memory answers every check, so a request never waits on the database's write lock to learn
    whether it is a replay; the rows are written before the request is handed on, waiting at most
    `lock_timeout` (20 ms: a burst of requests, or another process holding the lock, must not
    delay the ack), and otherwise they stay queued and a background thread writes them as soon as
    it can. At start the unexpired rows are loaded, so a
    restart remembers what the last process saw.
    """

    def __init__(self, store: Any, *, clock: Clock = time.time, lock_timeout: float = 0.02) -> None:
        self.store = store
        self.clock = clock
        self.lock_timeout = lock_timeout
        self._lock = threading.Lock()
        self._signatures: dict[str, float] = {}
        self._bodies: dict[str, float] = {}
        self._events: dict[str, float] = {}
        self._unsaved_signatures: list[tuple[str, str, dt.datetime]] = []
        self._unsaved_events: list[tuple[str, dt.datetime]] = []
        self._last_prune = 0.0
        self._prune_before: dt.datetime | None = None  # the tables' rows expired before this go
        self._writer: threading.Thread | None = None
        now = self._instant(clock())
        for signature, digest, expires in replays.unexpired_signatures(store, now):
            self._signatures[signature] = expires.timestamp()
            self._bodies[digest] = max(self._bodies.get(digest, 0.0), expires.timestamp())
        for event_id, expires in replays.unexpired_events(store, now):
            self._events[event_id] = expires.timestamp()

    @staticmethod
    def _instant(t: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(t, dt.UTC)

    def admit(self, signature: str, timestamp: int, body: bytes) -> bool:
        """False when this signature was seen within its validity; else remembers it (and the
        body's digest) and returns True."""
        digest = hashlib.sha256(body).hexdigest()
        expires = timestamp + SIGNATURE_TTL + 1
        with self._lock:
            self._forget_expired()
            if signature in self._signatures:
                return False
            self._signatures[signature] = expires
            self._bodies[digest] = max(self._bodies.get(digest, 0.0), expires)
            self._unsaved_signatures.append((signature, digest, self._instant(expires)))
        self.save()
        return True

    def seen_body(self, body: bytes) -> bool:
        """True when a request with exactly this body was taken within the last 5 minutes."""
        digest = hashlib.sha256(body).hexdigest()
        with self._lock:
            return self._bodies.get(digest, 0.0) >= self.clock()

    def first_event(self, event_id: str) -> bool:
        """True the first time an event ID is seen within an hour; False for a redelivery."""
        now = self.clock()
        with self._lock:
            if self._events.get(event_id, 0.0) >= now:
                return False
            self._events[event_id] = now + EVENT_TTL
            self._unsaved_events.append((event_id, self._instant(now + EVENT_TTL)))
        self.save()
        return True

    def _forget_expired(self) -> None:
        now = self.clock()
        if now - self._last_prune < 30:
            return
        self._last_prune = now
        for seen in (self._signatures, self._bodies, self._events):
            for key in [k for k, expires in seen.items() if expires < now]:
                del seen[key]
        self._prune_before = self._instant(now)

    def save(self, *, lock_timeout: float | None = None) -> bool:
        """Writes what is queued; True when nothing is left. On a locked store the rows stay
        queued and the background writer tries again."""
        with self._lock:
            if lock_timeout is None and self._writer is not None and self._writer.is_alive():
                return False  # the store is busy and the writer is on it: do not make a request wait
            signatures, self._unsaved_signatures = self._unsaved_signatures, []
            events, self._unsaved_events = self._unsaved_events, []
            prune_before, self._prune_before = self._prune_before, None
        if not signatures and not events and prune_before is None:
            return True
        wait = self.lock_timeout if lock_timeout is None else lock_timeout
        try:
            replays.remember(self.store, signatures=signatures, events=events, lock_timeout=wait)
            signatures, events = [], []
            if prune_before is not None:
                replays.prune(self.store, prune_before, lock_timeout=wait)
            return True
        except sqlite3.OperationalError as exc:
            with self._lock:
                self._unsaved_signatures[:0] = signatures
                self._unsaved_events[:0] = events
                self._prune_before = self._prune_before or prune_before
                start = self._writer is None or not self._writer.is_alive()
                if start:
                    self._writer = threading.Thread(target=self._write_later, name="recess-replays", daemon=True)
            if start:
                log.warning("replay log: %s; %d signature(s) and %d event ID(s) kept in memory, written when the store is free",
                            exc, len(signatures), len(events))
                self._writer.start()
            return False

    def _write_later(self) -> None:
        while not self.save(lock_timeout=5.0):
            time.sleep(1.0)


def replay_guard(rt: Any) -> ReplayGuard:
    """The runtime's one ReplayGuard (made on first use)."""
    with _guard_lock:
        guard = rt.extras.get("replay_guard")
        if guard is None:
            guard = rt.extras["replay_guard"] = ReplayGuard(rt.store)
        return guard


_guard_lock = threading.Lock()


def redelivered_event(rt: Any, body: Any) -> bool:
    """True for an Events API callback whose event_id was already taken (Slack's retries, over
    HTTP or Socket Mode): acknowledge it and do nothing."""
    event_id = body.get("event_id") if isinstance(body, dict) else None
    if not isinstance(event_id, str) or not event_id:
        return False
    return not replay_guard(rt).first_event(event_id)


# -- 5. the home workspace --------------------------------------------------------------------------


class Workspaces:
    """Which Slack teams recess answers: the one it is installed in (auth.test) and `[access] teams`.

    When auth.test failed at start-up, `[access] teams` alone decides; when that is empty too,
    nothing is known, and requests are let through with a warning (the signature still proves
    they come from Slack). Either way auth.test is asked again in the background, at most once a
    minute, while requests arrive, until it answers.
    """

    def __init__(self, configured: Iterable[str], lookup: Callable[[], str | None], *,
                 clock: Clock = time.monotonic, retry_every: float = 60.0,
                 on_home: Callable[[str], None] | None = None) -> None:
        self.configured = frozenset(configured)
        self.lookup = lookup
        self.on_home = on_home
        self.clock = clock
        self.retry_every = retry_every
        self.home: str | None = None
        self._asked_at: float | None = None
        self._lock = threading.Lock()
        self._ask()

    def _ask(self) -> None:
        self._asked_at = self.clock()
        try:
            home = self.lookup()
        except Exception as exc:  # Slack down, bad token, network: recess still starts
            log.error("auth.test failed (%s); the home workspace is unknown: %s", exc,
                      f"only [access] teams {sorted(self.configured)} are served" if self.configured
                      else "every team is served until auth.test answers")
            return
        if home:
            self.home = home
            if self.on_home is not None:
                self.on_home(home)
            log.info("home workspace %s (auth.test)%s", home,
                     f"; also serving [access] teams {sorted(self.configured - {home})}" if self.configured - {home} else "")

    @property
    def allowed(self) -> frozenset[str]:
        return self.configured | ({self.home} if self.home else frozenset())

    def serves(self, teams: list[str]) -> bool:
        if self.home is None:
            self._ask_again_later()
        allowed = self.allowed
        if not allowed:
            log.warning("home workspace unknown and [access] teams empty: serving team %s unchecked", ", ".join(teams) or "(none)")
            return True
        return bool(teams) and all(team in allowed for team in teams)

    def _ask_again_later(self) -> None:
        with self._lock:
            if self._asked_at is not None and self.clock() - self._asked_at < self.retry_every:
                return
            self._asked_at = self.clock()
        threading.Thread(target=self._ask, name="recess-auth-test", daemon=True).start()


def auth_test_team(client: Any) -> Callable[[], str | None]:
    def lookup() -> str | None:
        return client.auth_test().get("team_id")

    return lookup
