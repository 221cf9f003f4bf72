"""A fake Slack: the Web API and response URLs on a small real HTTP server, answering as Slack does.

Point recess at `api_url` (SLACK_API_URL, or make_client(base_url=fake.api_url)). Every call is
recorded (`calls`, `of(method)`, `texts()`), and the channel is kept as a Slack client would show
it: messages, thread replies, edits and ephemeral replies (`messages`, `replies()`, `events`).
Answers have Slack's shapes and Slack's errors: `not_authed` without a token, `invalid_auth` for
the wrong one (when the fake was given one), `message_not_found`, `thread_not_found`,
`unknown_method`, and `channel_not_found` / `user_not_found` when it was told which channels and
users exist (by default every channel and user exists, and users live in New York).
`conversations.history` and `conversations.replies` answer with the messages posted, their
`metadata` included with `include_all_metadata`, as Slack does.

It can be told to answer 429 or 500 for the next N calls of a method (`fail_next`), to test that
deploys never depend on Slack, and to answer every call after `latency` seconds (Slack itself
takes tens to hundreds of milliseconds). `FakeSlackProcess` runs it in a child process, so that
a benchmark's measuring does not compete with it for one GIL.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)
    answer: dict[str, Any] | None = None  # what the fake answered, once it has


@dataclass(frozen=True)
class User:
    id: str
    name: str
    tz: str = "America/New_York"


@dataclass
class Message:
    """One message as a Slack client holds it. `ephemeral_to` is set for "only visible to you"."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    broadcast: bool = False
    ephemeral_to: str | None = None
    edits: int = 0
    metadata: dict[str, Any] | None = None  # chat.postMessage's `metadata` (event_type, event_payload)

    def buttons(self) -> list[tuple[str, dict[str, Any]]]:
        """(block_id, button element) of every button on the message, in order."""
        out = []
        for block in self.blocks:
            if block.get("type") == "actions":
                for element in block.get("elements", []):
                    if element.get("type") == "button":
                        out.append((block.get("block_id", ""), element))
        return out

    def button(self, label: str) -> tuple[str, dict[str, Any]]:
        for block_id, element in self.buttons():
            if element.get("text", {}).get("text") == label:
                return block_id, element
        shown = ", ".join(e.get("text", {}).get("text", "?") for _, e in self.buttons()) or "none"
        raise LookupError(f"no button {label!r} on this message (buttons: {shown})")

    def as_slack(self) -> dict[str, Any]:
        """The message object Slack puts in its answers and in a click's payload."""
        out: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        if self.blocks:
            out["blocks"] = self.blocks
        if self.thread_ts:
            out["thread_ts"] = self.thread_ts
        return out


EventKind = Literal["posted", "replied", "updated", "ephemeral"]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    message: Message
    at: float = field(default_factory=time.monotonic)


class _Server(ThreadingHTTPServer):
    # The standard library's listen backlog is 5: a burst of Web API calls from the bot's threads
    # would overflow it and wait for a SYN retransmit (1 s). Slack itself has no such limit.
    request_queue_size = 256
    daemon_threads = True


class FakeSlack:
    def __init__(
        self,
        *,
        token: str | None = None,
        users: list[User] | None = None,
        channels: dict[str, str] | None = None,
        team_id: str = "T1",
        bot_user: str = "UBOT",
        latency: float = 0.0,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.token = token
        self.users = {u.id: u for u in users or []}
        self.closed_user_list = users is not None
        self.channels = dict(channels) if channels is not None else None  # id -> name; None: any
        self.team_id = team_id
        self.bot_user = bot_user
        self.latency = latency
        self.on_event = on_event
        self.calls: list[Call] = []
        self.responses: list[Call] = []  # posts to response URLs
        self.messages: list[Message] = []
        self.events: list[Event] = []
        self.unanswered: list[str] = []  # Web API methods the fake does not know
        self.user_tz: dict[str, str] = {}
        self.usergroups: dict[str, list[str]] = {}
        self.usergroup_error: str | None = None
        self._faults: dict[str, list[int]] = {}
        self._by_ts: dict[tuple[str, str], Message] = {}
        self._responders: dict[str, tuple[str, str, Message | None]] = {}  # token -> user, channel, source
        self._ts = itertools.count(1)
        self._tokens = itertools.count(1)
        self._cond = threading.Condition(threading.RLock())
        self.server = _Server(("127.0.0.1", 0), _handler_for(self))
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.base_url}/api/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-slack", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeSlack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- response URLs ----------------------------------------------------------------------------

    def response_url(self, name: str = "r1") -> str:
        """A response URL whose posts are only recorded (in `responses`)."""
        return f"{self.base_url}/respond/{name}"

    def response_url_for(self, user: str, channel: str, source: Message | None = None) -> str:
        """A fresh response URL whose posts also reach the channel, as Slack delivers them: to
        `user` only, in `channel`, or replacing `source` (the message that was clicked)."""
        token = f"resp{next(self._tokens)}"
        with self._cond:
            self._responders[token] = (user, channel, source)
        return self.response_url(token)

    def deliver_reply(self, user: str, channel: str, source: Message | None, body: dict[str, Any]) -> Message:
        """What Slack does with an ack body or a response URL post."""
        blocks = _blocks(body.get("blocks"))
        text = body.get("text") or ""
        if source is not None and body.get("delete_original") in (True, "true"):
            with self._cond:
                source.text, source.blocks = "(deleted)", []
            self._record("updated", source, new=False)
            return source
        if source is not None and body.get("replace_original") in (True, "true"):
            with self._cond:
                source.text, source.blocks = text, blocks
                source.edits += 1
            self._record("updated", source, new=False)
            return source
        if body.get("response_type") == "in_channel":
            message = Message(channel, self._next_ts(), text, blocks)
            self._record("posted", message, new=True)
            return message
        message = Message(channel, self._next_ts(), text, blocks, ephemeral_to=user)
        self._record("ephemeral", message, new=True)
        return message

    def _respond(self, token: str, params: dict[str, Any]) -> None:
        with self._cond:
            self.responses.append(Call(f"/respond/{token}", params))
            target = self._responders.get(token)
            self._cond.notify_all()
        if target is not None:
            self.deliver_reply(*target, params)

    # -- fault injection ------------------------------------------------------------------------

    def fail_next(self, method: str, status: int, count: int = 1) -> None:
        """The next `count` calls of `method` answer HTTP `status` (429 comes with Retry-After)."""
        with self._cond:
            self._faults.setdefault(method, []).extend([status] * count)

    # -- the Web API ------------------------------------------------------------------------------

    def answer(self, method: str, params: dict[str, Any], token: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(HTTP status, JSON body, extra headers) for one Web API call."""
        if self.latency:
            time.sleep(self.latency)
        with self._cond:
            faults = self._faults.get(method)
            if faults:
                status = faults.pop(0)
                error = "ratelimited" if status == 429 else "internal_error"
                self.calls.append(Call(f"{method}!{status}", params, answer={"ok": False, "error": error}))
                self._cond.notify_all()
                return status, {"ok": False, "error": error}, {"Retry-After": "1"} if status == 429 else {}
            call = Call(method, params)
            self.calls.append(call)
            self._cond.notify_all()
        status, body = self._answer(method, params, token)
        with self._cond:
            call.answer = body
        return status, body, {}

    def _answer(self, method: str, params: dict[str, Any], token: str | None) -> tuple[int, dict[str, Any]]:
        if method == "api.test":
            return 200, {"ok": True, "args": params}
        if not token:
            return 200, {"ok": False, "error": "not_authed"}
        if self.token is not None and token != self.token:
            return 200, {"ok": False, "error": "invalid_auth"}
        handler = getattr(self, "_api_" + method.replace(".", "_"), None)
        if handler is None:
            with self._cond:
                self.unanswered.append(method)
            return 200, {"ok": False, "error": "unknown_method"}
        return 200, handler(params)

    def _known_channel(self, channel: Any) -> bool:
        return bool(channel) and (self.channels is None or channel in self.channels)

    def _api_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://schools.slack.com/", "team": "Schools", "team_id": self.team_id,
                "user": "recess", "user_id": self.bot_user, "bot_id": "B" + self.bot_user.removeprefix("U")}

    def _api_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802 (Slack's name)
        channel = params.get("channel")
        if not self._known_channel(channel):
            return {"ok": False, "error": "channel_not_found"}
        text, blocks = params.get("text") or "", _blocks(params.get("blocks"))
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        thread_ts = params.get("thread_ts") or None
        with self._cond:
            if thread_ts and (channel, thread_ts) not in self._by_ts:
                return {"ok": False, "error": "thread_not_found"}
        broadcast = params.get("reply_broadcast") in (True, "true", "1")
        message = Message(channel, self._next_ts(), text, blocks, thread_ts=thread_ts, broadcast=broadcast,
                          metadata=_metadata(params.get("metadata")))
        self._record("replied" if thread_ts else "posted", message, new=True)
        return {"ok": True, "channel": channel, "ts": message.ts, "message": message.as_slack()}

    def _api_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = params.get("channel"), params.get("ts")
        with self._cond:
            message = self._by_ts.get((channel, ts))
            if message is None:
                return {"ok": False, "error": "message_not_found"}
            if "text" in params:
                message.text = params.get("text") or ""
            if "blocks" in params:
                message.blocks = _blocks(params.get("blocks"))
            message.edits += 1
        self._record("updated", message, new=False)
        return {"ok": True, "channel": channel, "ts": ts, "text": message.text, "message": message.as_slack()}

    def _api_conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        """The channel's messages, newest first: top-level ones and replies broadcast to it."""
        channel = params.get("channel")
        if not self._known_channel(channel):
            return {"ok": False, "error": "channel_not_found"}
        with self._cond:
            found = [m for m in self.messages if m.channel == channel and m.ephemeral_to is None
                     and (not m.thread_ts or m.broadcast)]
        found = _between(found, params)
        found.reverse()
        return _page(found, params, default_limit=100, with_metadata=_flag(params.get("include_all_metadata")))

    def _api_conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        """A thread: its parent first, then the replies in `oldest`..`latest`, oldest first."""
        channel, ts = params.get("channel"), params.get("ts")
        if not self._known_channel(channel):
            return {"ok": False, "error": "channel_not_found"}
        with self._cond:
            parent = self._by_ts.get((channel, ts))
            if parent is None or parent.ephemeral_to is not None:
                return {"ok": False, "error": "thread_not_found"}
            replies = [m for m in self.messages if m.channel == channel and m.thread_ts == ts]
        return _page([parent, *_between(replies, params)], params, default_limit=1000,
                     with_metadata=_flag(params.get("include_all_metadata")))

    def _api_chat_postEphemeral(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        channel, user = params.get("channel"), params.get("user")
        if not self._known_channel(channel):
            return {"ok": False, "error": "channel_not_found"}
        if self.closed_user_list and user not in self.users:
            return {"ok": False, "error": "user_not_in_channel"}
        message = Message(channel, self._next_ts(), params.get("text") or "", _blocks(params.get("blocks")), ephemeral_to=user)
        self._record("ephemeral", message, new=True)
        return {"ok": True, "message_ts": message.ts}

    def _api_users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        ident = params.get("user") or ""
        user = self.users.get(ident)
        if user is None:
            if self.closed_user_list:
                return {"ok": False, "error": "user_not_found"}
            user = User(ident, ident.lower(), self.user_tz.get(ident, "America/New_York"))
        return {"ok": True, "user": {"id": user.id, "name": user.name, "real_name": user.name.title(),
                                     "tz": self.user_tz.get(user.id, user.tz), "is_bot": False, "deleted": False}}

    def _api_usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.usergroup_error:
            return {"ok": False, "error": self.usergroup_error}
        group = params.get("usergroup")
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": self.usergroups[group]}

    def _api_views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        view = params.get("view")
        if isinstance(view, str):
            try:
                view = json.loads(view)
            except ValueError:
                return {"ok": False, "error": "invalid_arguments"}
        if not isinstance(view, dict) or not params.get("user_id"):
            return {"ok": False, "error": "invalid_arguments"}
        return {"ok": True, "view": {"id": "V0HOME", **view}}

    # -- the channel ----------------------------------------------------------------------------

    def _next_ts(self) -> str:
        return f"{1800000000 + next(self._ts)}.000100"

    def _record(self, kind: EventKind, message: Message, *, new: bool) -> None:
        with self._cond:
            if new:
                self.messages.append(message)
                self._by_ts[(message.channel, message.ts)] = message
            event = Event(kind, message)
            self.events.append(event)
            self._cond.notify_all()
        if self.on_event is not None:
            self.on_event(event)

    # -- what tests read --------------------------------------------------------------------------

    def of(self, method: str) -> list[Call]:
        with self._cond:
            return [c for c in self.calls if c.method == method]

    def texts(self, method: str = "chat.postMessage") -> list[str]:
        return [c.params.get("text", "") for c in self.of(method)]

    def ephemerals_to(self, user: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.ephemeral_to == user]

    def channel_messages(self, channel: str) -> list[Message]:
        """Top-level messages of the channel, oldest first (threads are in replies())."""
        with self._cond:
            return [m for m in self.messages if m.channel == channel and m.ephemeral_to is None and not m.thread_ts]

    def replies(self, message: Message) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.thread_ts == message.ts and m.channel == message.channel]

    def wait_for(self, predicate: Callable[[FakeSlack], Any], timeout: float = 10.0) -> Any:
        """Waits until predicate(self) is truthy (re-checked on every call and message); returns
        its value, or raises AssertionError naming the calls seen."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("fake Slack did not see the expected calls in time; saw: "
                                         + ", ".join(c.method for c in self.calls))
                self._cond.wait(min(remaining, 0.2))


def _blocks(value: Any) -> list[dict[str, Any]]:
    if not value:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    return value if isinstance(value, list) else []


def _metadata(value: Any) -> dict[str, Any] | None:
    """Message metadata as chat.postMessage takes it: a JSON object (or its text, in a form body)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) and value.get("event_type") else None


def _flag(value: Any) -> bool:
    return value in (True, 1, "1", "true")


def _between(messages: list[Message], params: dict[str, Any]) -> list[Message]:
    """Messages whose ts is after `oldest` and before `latest` (both included with `inclusive`)."""
    inclusive = _flag(params.get("inclusive"))
    oldest, latest = float(params.get("oldest") or 0), float(params.get("latest") or "inf")
    return [m for m in messages
            if (oldest <= float(m.ts) if inclusive else oldest < float(m.ts))
            and (float(m.ts) <= latest if inclusive else float(m.ts) < latest)]


def _page(messages: list[Message], params: dict[str, Any], *, default_limit: int, with_metadata: bool) -> dict[str, Any]:
    """One page of a conversations.* answer, with Slack's cursor pagination."""
    cursor = str(params.get("cursor") or "")
    start = int(cursor.removeprefix("next:")) if cursor.startswith("next:") else 0
    limit = max(1, min(int(params.get("limit") or default_limit), 1000))
    shown = []
    for m in messages[start:start + limit]:
        out = m.as_slack()
        if with_metadata and m.metadata:
            out["metadata"] = m.metadata
        shown.append(out)
    more = start + limit < len(messages)
    return {"ok": True, "messages": shown, "has_more": more,
            "response_metadata": {"next_cursor": f"next:{start + limit}" if more else ""}}


def _handler_for(fake: FakeSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path, _, query = self.path.partition("?")
            self._api(path, {k: v[0] for k, v in urllib.parse.parse_qs(query).items()})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8")
            path, _, query = self.path.partition("?")
            if "json" in (self.headers.get("Content-Type") or ""):
                try:
                    params = json.loads(raw or "{}")
                except ValueError:
                    self._send(200, {"ok": False, "error": "invalid_json"})
                    return
            else:
                params = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
            params.update({k: v[0] for k, v in urllib.parse.parse_qs(query).items()})
            if path.startswith("/respond/"):
                fake._respond(path.removeprefix("/respond/"), params)
                self._send(200, {"ok": True})
                return
            self._api(path, params)

        def _api(self, path: str, params: dict[str, Any]) -> None:
            if not path.startswith("/api/"):
                self._send(404, {"ok": False, "error": "not_found"})
                return
            auth = self.headers.get("Authorization") or ""
            token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else params.pop("token", None)
            self._send(*fake.answer(path.removeprefix("/api/"), params, token))

        def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler


class FakeSlackProcess:
    """FakeSlack in a child process (`python -m tests.kit.slack`), for benchmarks: the bot's Slack
    calls then do not compete with the measuring process. Lives until close()."""

    def __init__(self, latency: float = 0.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.kit.slack", "--latency", str(latency)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError("the fake Slack did not start")
        self.port = int(line)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.base_url}/api/"

    def response_url(self, name: str = "r1") -> str:
        return f"{self.base_url}/respond/{name}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> FakeSlackProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="a fake Slack Web API until stdin closes; prints its port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every Web API answer")
    args = parser.parse_args()
    fake = FakeSlack(latency=args.latency)
    print(fake.port, flush=True)
    sys.stdin.read()
    fake.close()


if __name__ == "__main__":
    main()
