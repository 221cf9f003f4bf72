"""A Slack stand-in for the offline demo: both sides of Slack, on one small HTTP server.

Towards recess it is Slack's Web API (point `SLACK_API_URL` or `make_client(base_url=...)` at
`api_url`): it answers chat.postMessage, chat.update, chat.postEphemeral, users.info,
usergroups.users.list, views.publish and auth.test, and keeps the channel as Slack would show it,
threads and edits included. Towards people it is the Slack client: `command()` sends a slash
command and `click()` presses a button on a message it holds, each as a form POST signed with the
signing secret exactly as Slack signs it, with a `response_url` that leads back here.

Everything people would see (channel messages, thread replies, card edits, ephemeral replies) is
also handed to `on_event` as it happens, and `render_blocks()` turns Block Kit into plain text
lines for a terminal.
"""

from __future__ import annotations

import html
import itertools
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import httpx
from slack_sdk.signature import SignatureVerifier


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


EventKind = Literal["posted", "replied", "updated", "ephemeral"]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    message: Message
    at: float = field(default_factory=time.monotonic)


class SlackError(RuntimeError):
    """recess answered a request from "Slack" with something other than 200."""


class SlackStandIn:
    def __init__(
        self,
        *,
        signing_secret: str,
        users: list[User],
        channels: dict[str, str],
        bot_token: str = "xoxb-demo",
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.signing_secret = signing_secret
        self.users = {u.id: u for u in users}
        self.channels = dict(channels)  # id -> name
        self.bot_token = bot_token
        self.on_event = on_event
        self.request_url: str | None = None  # recess's /slack/events, set by connect()
        self.messages: list[Message] = []
        self.events: list[Event] = []
        self.unanswered: list[str] = []  # Web API methods the stand-in does not know
        self._by_ts: dict[tuple[str, str], Message] = {}
        self._responders: dict[str, tuple[str, str, Message | None]] = {}  # token -> user, channel, source
        self._ts = itertools.count(1)
        self._cond = threading.Condition(threading.RLock())
        self._signer = SignatureVerifier(signing_secret)
        self._http = httpx.Client(timeout=10)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.base_url}/api/"
        self._thread = threading.Thread(target=self.server.serve_forever, name="slack-standin", daemon=True)
        self._thread.start()

    def connect(self, request_url: str) -> None:
        """Where Slack sends slash commands and button clicks (the app's Request URL)."""
        self.request_url = request_url

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._http.close()

    # -- what people do -----------------------------------------------------------------------

    def command(self, user: str, command: str, text: str = "", *, channel: str) -> Message | None:
        """Types `/command text` in `channel`; returns the ephemeral reply recess answered with."""
        token = self._responder(user, channel, None)
        form = {
            "token": "verification-token-unused", "team_id": "T0SCHOOLS", "team_domain": "schools",
            "channel_id": channel, "channel_name": self.channels.get(channel, channel),
            "user_id": user, "user_name": self.users[user].name, "command": command, "text": text,
            "api_app_id": "A0RECESS", "is_enterprise_install": "false",
            "response_url": f"{self.base_url}/respond/{token}", "trigger_id": f"{time.time():.0f}.1.demo",
        }
        reply = self._send(urllib.parse.urlencode(form))
        if not reply:
            return None
        return self._deliver_response(user, channel, None, reply)

    def click(self, user: str, message: Message, label: str) -> dict[str, Any] | None:
        """Presses the button `label` on `message` (confirming its dialog, if it has one).

        Returns the button's confirm dialog, so the caller can show what was asked.
        """
        block_id, button = message.button(label)
        token = self._responder(user, message.channel, message)
        container = {"type": "message", "message_ts": message.ts, "channel_id": message.channel,
                     "is_ephemeral": message.ephemeral_to is not None}
        payload: dict[str, Any] = {
            "type": "block_actions",
            "team": {"id": "T0SCHOOLS", "domain": "schools"},
            "user": {"id": user, "username": self.users[user].name, "team_id": "T0SCHOOLS"},
            "api_app_id": "A0RECESS",
            "token": "verification-token-unused",
            "container": container,
            "trigger_id": f"{time.time():.0f}.2.demo",
            "channel": {"id": message.channel, "name": self.channels.get(message.channel, message.channel)},
            "response_url": f"{self.base_url}/respond/{token}",
            "actions": [{
                "type": "button", "action_id": button["action_id"], "block_id": block_id,
                "text": button.get("text"), "value": button.get("value"), "style": button.get("style"),
                "action_ts": f"{time.time():.6f}",
            }],
        }
        if message.ephemeral_to is None:
            payload["message"] = {"type": "message", "ts": message.ts, "text": message.text, "blocks": message.blocks}
        reply = self._send(urllib.parse.urlencode({"payload": json.dumps(payload)}))
        if reply:
            self._deliver_response(user, message.channel, message, reply)
        return button.get("confirm")

    def _send(self, body: str) -> dict[str, Any] | None:
        if self.request_url is None:
            raise SlackError("the stand-in is not connected to an app (call connect())")
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": self._signer.generate_signature(timestamp=ts, body=body),
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        }
        response = self._http.post(self.request_url, content=body.encode(), headers=headers)
        if response.status_code != 200:
            raise SlackError(f"the app answered HTTP {response.status_code}: {response.text[:300]}")
        if not response.content.strip():
            return None
        if "json" in response.headers.get("content-type", ""):
            return response.json()
        return {"text": response.text}

    # -- waiting ------------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Waits until `predicate()` is truthy (re-checked on every event); returns its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the stand-in did not see what was expected in time")
                self._cond.wait(min(remaining, 0.2))

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

    # -- recording ----------------------------------------------------------------------------

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

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

    def _responder(self, user: str, channel: str, source: Message | None) -> str:
        token = f"r{next(self._ts)}"
        with self._cond:
            self._responders[token] = (user, channel, source)
        return token

    def _deliver_response(self, user: str, channel: str, source: Message | None, body: dict[str, Any]) -> Message:
        """What Slack does with an ack body or a response_url POST."""
        blocks = _blocks(body.get("blocks"))
        text = body.get("text") or ""
        if source is not None and (body.get("replace_original") in (True, "true")):
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

    # -- the Web API --------------------------------------------------------------------------

    def answer(self, method: str, params: dict[str, Any], authorization: str) -> dict[str, Any]:
        if method == "api.test":
            return {"ok": True, "args": params}
        if not authorization.startswith("Bearer "):
            return {"ok": False, "error": "not_authed"}
        if authorization.removeprefix("Bearer ") != self.bot_token:
            return {"ok": False, "error": "invalid_auth"}
        handler = getattr(self, "_api_" + method.replace(".", "_"), None)
        if handler is None:
            with self._cond:
                self.unanswered.append(method)
            return {"ok": False, "error": "unknown_method"}
        return handler(params)

    def _api_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://schools.slack.com/", "team": "Schools", "team_id": "T0SCHOOLS",
                "user": "recess", "user_id": "U0RECESS", "bot_id": "B0RECESS"}

    def _api_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        channel = params.get("channel")
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        text, blocks = params.get("text") or "", _blocks(params.get("blocks"))
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        thread_ts = params.get("thread_ts") or None
        if thread_ts and (channel, thread_ts) not in self._by_ts:
            return {"ok": False, "error": "thread_not_found"}
        broadcast = params.get("reply_broadcast") in (True, "true", "1")
        message = Message(channel, self._next_ts(), text, blocks, thread_ts=thread_ts, broadcast=broadcast)
        self._record("replied" if thread_ts else "posted", message, new=True)
        return {"ok": True, "channel": channel, "ts": message.ts, "message": {"type": "message", "text": text, "ts": message.ts}}

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
        return {"ok": True, "channel": channel, "ts": ts, "text": message.text}

    def _api_chat_postEphemeral(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        channel, user = params.get("channel"), params.get("user")
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        if user not in self.users:
            return {"ok": False, "error": "user_not_in_channel"}
        message = Message(channel, self._next_ts(), params.get("text") or "", _blocks(params.get("blocks")), ephemeral_to=user)
        self._record("ephemeral", message, new=True)
        return {"ok": True, "message_ts": message.ts}

    def _api_users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(params.get("user", ""))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": {"id": user.id, "name": user.name, "real_name": user.name.title(),
                                     "tz": user.tz, "is_bot": False, "deleted": False}}

    def _api_usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": False, "error": "no_such_subteam"}  # the demo has no user groups

    def _api_views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "view": {"id": "V0HOME", "type": "home"}}

    # -- response_url ----------------------------------------------------------------------------

    def respond(self, token: str, body: dict[str, Any]) -> bool:
        with self._cond:
            target = self._responders.get(token)
        if target is None:
            return False
        user, channel, source = target
        if body.get("delete_original") in (True, "true") and source is not None:
            with self._cond:
                source.text, source.blocks = "(deleted)", []
            self._record("updated", source, new=False)
            return True
        self._deliver_response(user, channel, source, body)
        return True


def _blocks(value: Any) -> list[dict[str, Any]]:
    if not value:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    return value if isinstance(value, list) else []


def _handler_for(standin: SlackStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path, _, query = self.path.partition("?")
            params = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
            self._api(path, params)

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
                found = standin.respond(path.removeprefix("/respond/"), params)
                self._send(200 if found else 404, {"ok": found} if found else {"ok": False, "error": "expired_url"})
                return
            self._api(path, params)

        def _api(self, path: str, params: dict[str, Any]) -> None:
            if not path.startswith("/api/"):
                self._send(404, {"ok": False, "error": "not_found"})
                return
            auth = self.headers.get("Authorization") or ""
            if not auth and params.get("token"):
                auth = f"Bearer {params.pop('token')}"
            self._send(200, standin.answer(path.removeprefix("/api/"), params, auth))

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


# -- showing messages in a terminal ------------------------------------------------------------

EMOJI = {
    "arrows_counterclockwise": "🔄", "alarm_clock": "⏰", "ballot_box_with_check": "☑️", "boom": "💥",
    "fast_forward": "⏩", "hourglass": "⌛", "hourglass_flowing_sand": "⏳", "information_source": "ℹ️",
    "large_blue_circle": "🔵", "large_green_circle": "🟢", "large_yellow_circle": "🟡",
    "leftwards_arrow_with_hook": "↩️", "memo": "📝", "no_entry": "⛔", "no_entry_sign": "🚫",
    "recycle": "♻️", "red_circle": "🔴", "rocket": "🚀", "rotating_light": "🚨", "school": "🏫",
    "seedling": "🌱", "snowflake": "❄️", "sunny": "☀️", "sunrise": "🌅", "tada": "🎉",
    "triangular_flag_on_post": "🚩", "warning": "⚠️", "wastebasket": "🗑️", "white_check_mark": "✅",
    "white_circle": "⚪", "x": "❌",
}

_EMOJI = re.compile(r":([a-z0-9_+-]+):")
_MENTION = re.compile(r"<([@#!])([A-Z0-9^]+)(?:\|([^>]*))?>")
_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]*))?>")
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")


class Renderer:
    """Slack mrkdwn and Block Kit as plain text: names for IDs, emoji for shortcodes."""

    def __init__(self, users: dict[str, User], channels: dict[str, str], *, bold: Callable[[str], str] = str) -> None:
        self.users = users
        self.channels = channels
        self.bold = bold

    def text(self, mrkdwn: str) -> str:
        def mention(m: re.Match[str]) -> str:
            sigil, ident, label = m.groups()
            if sigil == "@":
                user = self.users.get(ident)
                return "@" + (user.name if user else label or ident)
            if sigil == "#":
                return "#" + (label or self.channels.get(ident, ident))
            return "@" + (label or ident.strip("^"))

        out = _MENTION.sub(mention, mrkdwn)
        out = _LINK.sub(lambda m: m.group(2) or m.group(1), out)
        out = _EMOJI.sub(lambda m: EMOJI.get(m.group(1), m.group(0)), out)
        out = out.replace("```", "")
        out = _BOLD.sub(lambda m: self.bold(m.group(1)), out)
        return html.unescape(out)

    def blocks(self, blocks: list[dict[str, Any]], fallback: str = "") -> list[str]:
        """One list of lines for a message; its `text` when it has no blocks."""
        if not blocks:
            return self.text(fallback).splitlines() or [""]
        lines: list[str] = []
        for block in blocks:
            kind = block.get("type")
            if kind == "header":
                lines.append(self.bold(self.text(block.get("text", {}).get("text", ""))))
            elif kind == "section":
                if block.get("text"):
                    lines += self.text(block["text"].get("text", "")).splitlines()
                for f in block.get("fields") or []:
                    lines += self.text(f.get("text", "")).splitlines()
            elif kind == "context":
                parts = [self.text(e.get("text", "")) for e in block.get("elements", []) if e.get("text")]
                lines += "  ".join(parts).splitlines()
            elif kind == "actions":
                labels = [f"[{e.get('text', {}).get('text', '?')}]" for e in block.get("elements", [])]
                lines.append(" ".join(labels))
            elif kind == "divider":
                continue
            else:
                lines.append(f"({kind} block)")
        return lines
