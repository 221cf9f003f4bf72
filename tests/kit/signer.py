"""Requests to recess's /slack/events exactly as Slack sends them: form (or JSON event) bodies in
Slack's shapes, signed with v0 HMAC-SHA256 of `v0:{timestamp}:{body}`.

`SlackSender` builds the bodies (`command_body`, `action_body`, `event_body`) and their headers
(`headers`) separately from sending them, so a benchmark can send pre-built requests from its own
connections; `command()`, `action()` and `event()` build and send in one call.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
import urllib.parse
from typing import Any

import httpx

# Slack gives every command and click its own trigger_id: two identical requests sent in the same
# second are two requests, never a replay of one signature.
_TRIGGERS = itertools.count(1)

FORM = "application/x-www-form-urlencoded"


def sign(secret: str, timestamp: str, body: str) -> str:
    """Slack's X-Slack-Signature for `body` sent at `timestamp` (seconds, as a string)."""
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class SlackSender:
    def __init__(self, base_url: str, secret: str, *, response_url: str = "https://hooks.invalid/r",
                 team_id: str = "T1", app_id: str = "A1", timeout: float = 10.0) -> None:
        self.url = base_url.rstrip("/") + "/slack/events"
        self.secret = secret
        self.response_url = response_url
        self.team_id = team_id
        self.app_id = app_id
        self.http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()

    # -- bodies ------------------------------------------------------------------------------------

    def command_body(self, command: str, text: str = "", *, user: str = "U0ENGINEER", channel: str = "C0ENG",
                     channel_name: str = "eng", user_name: str | None = None, response_url: str | None = None) -> str:
        """A slash command, as the form Slack posts."""
        return urllib.parse.urlencode({
            "token": "legacy", "team_id": self.team_id, "team_domain": "school", "channel_id": channel,
            "channel_name": channel_name, "user_id": user, "user_name": user_name or user.lower(),
            "command": command, "text": text, "api_app_id": self.app_id, "is_enterprise_install": "false",
            "response_url": response_url or self.response_url, "trigger_id": f"{time.time():.0f}.{next(_TRIGGERS)}.1",
        })

    def action_body(self, action_id: str, value: str, *, user: str, message_ts: str | None = "1800000001.000100",
                    channel: str = "C0DEPLOYS", block_id: str = "b", ephemeral: bool = False,
                    message: dict[str, Any] | None = None, button: dict[str, Any] | None = None,
                    user_name: str | None = None, response_url: str | None = None,
                    selected: str | None = None, home: bool = False) -> str:
        """A button click (`block_actions`). `message` is the clicked message as Slack holds it
        (a stub by default); with `ephemeral`, the click is on a message only the clicker saw, and
        Slack sends no `message`. `button` adds the element's text and style, as Slack does.
        `selected` makes it a choice in a radio-buttons or select element (its `selected_option`),
        and `home` a click on the App Home tab (a view container, no message, no response URL)."""
        if ephemeral or not message_ts:
            shown = None
        else:
            shown = message or {"type": "message", "ts": message_ts, "text": "card"}
        action = {"type": "button", "action_id": action_id, "block_id": block_id, "value": value,
                  "action_ts": f"{time.time():.6f}"}
        for key in ("text", "style"):
            if button and button.get(key):
                action[key] = button[key]
        if selected is not None:
            action = {"type": "radio_buttons", "action_id": action_id, "block_id": block_id,
                      "selected_option": {"value": selected, "text": {"type": "plain_text", "text": selected}},
                      "action_ts": action["action_ts"]}
        payload: dict[str, Any] = {
            "type": "block_actions",
            "team": {"id": self.team_id},
            "user": {"id": user, "username": user_name or user.lower(), "team_id": self.team_id},
            "api_app_id": self.app_id,
            "token": "legacy",
            "trigger_id": f"{time.time():.0f}.{next(_TRIGGERS)}.2",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": ephemeral},
            "channel": {"id": channel},
            "response_url": response_url or self.response_url,
            "actions": [action],
        }
        if shown is not None:
            payload["message"] = shown
        if home:
            for key in ("message", "channel", "response_url"):
                payload.pop(key, None)
            payload["container"] = {"type": "view", "view_id": "V0HOME"}
            payload["view"] = {"id": "V0HOME", "type": "home", "blocks": []}
        return urllib.parse.urlencode({"payload": json.dumps(payload)})

    def event_body(self, event: dict[str, Any], *, event_id: str = "Ev1") -> str:
        """An Events API callback (JSON)."""
        return json.dumps({"token": "legacy", "team_id": self.team_id, "api_app_id": self.app_id,
                           "type": "event_callback", "event_id": event_id, "event_time": int(time.time()),
                           "event": event})

    def headers(self, body: str, content_type: str = FORM, *, timestamp: int | None = None,
                secret: str | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        return {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sign(secret or self.secret, ts, body),
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        }

    # -- sending -----------------------------------------------------------------------------------

    def send(self, body: str, content_type: str = FORM, *, timestamp: int | None = None, secret: str | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        h = {**self.headers(body, content_type, timestamp=timestamp, secret=secret), **(headers or {})}
        return self.http.post(self.url, content=body.encode(), headers=h)

    def command(self, command: str, text: str = "", *, user: str = "U0ENGINEER", channel: str = "C0ENG",
                timestamp: int | None = None, secret: str | None = None, **shape: Any) -> httpx.Response:
        body = self.command_body(command, text, user=user, channel=channel, **shape)
        return self.send(body, timestamp=timestamp, secret=secret)

    def action(self, action_id: str, value: str, *, user: str, timestamp: int | None = None,
               secret: str | None = None, **shape: Any) -> httpx.Response:
        return self.send(self.action_body(action_id, value, user=user, **shape), timestamp=timestamp, secret=secret)

    def event(self, event: dict[str, Any], *, event_id: str = "Ev1", retry_num: int | None = None,
              timestamp: int | None = None) -> httpx.Response:
        """An event; with `retry_num`, Slack's retry of it after an http_timeout. A retry is a new
        delivery, signed when Slack sends it: at least 3 s after the try before (so its signature
        differs), which is where its timestamp is put unless one is given."""
        headers = None
        if retry_num:
            headers = {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"}
            if timestamp is None:
                timestamp = int(time.time()) + 3 * retry_num
        return self.send(self.event_body(event, event_id=event_id), "application/json", timestamp=timestamp,
                         headers=headers)
