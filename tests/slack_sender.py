"""Sends requests to recess's /slack/events exactly as Slack does: form bodies, signed."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.parse
from typing import Any

import httpx


def sign(secret: str, timestamp: str, body: str) -> str:
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class SlackSender:
    def __init__(self, base_url: str, secret: str, *, response_url: str = "https://hooks.invalid/r") -> None:
        self.url = base_url.rstrip("/") + "/slack/events"
        self.secret = secret
        self.response_url = response_url
        self.http = httpx.Client(timeout=10)

    def send(self, body: str, content_type: str, *, timestamp: int | None = None, secret: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        h = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sign(secret or self.secret, ts, body),
            **(headers or {}),
        }
        return self.http.post(self.url, content=body.encode(), headers=h)

    def command(self, command: str, text: str = "", *, user: str = "U0ENGINEER", channel: str = "C0ENG", **kw: Any) -> httpx.Response:
        form = {
            "token": "legacy", "team_id": "T1", "team_domain": "school", "channel_id": channel,
            "channel_name": "eng", "user_id": user, "user_name": user.lower(), "command": command,
            "text": text, "api_app_id": "A1", "response_url": self.response_url, "trigger_id": "1.2.3",
        }
        return self.send(urllib.parse.urlencode(form), "application/x-www-form-urlencoded", **kw)

    def action(self, action_id: str, value: str, *, user: str, message_ts: str | None = "1800000001.000100", channel: str = "C0DEPLOYS", block_id: str = "b", ephemeral: bool = False, **kw: Any) -> httpx.Response:
        """A button click; with `ephemeral`, on a message only the clicker saw (no `message`)."""
        payload = {
            "type": "block_actions",
            "team": {"id": "T1"},
            "user": {"id": user, "username": user.lower(), "team_id": "T1"},
            "api_app_id": "A1",
            "trigger_id": "1.2.3",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": ephemeral},
            "channel": {"id": channel},
            "message": {"ts": message_ts, "text": "card"} if message_ts and not ephemeral else None,
            "response_url": self.response_url,
            "actions": [{"action_id": action_id, "block_id": block_id, "value": value, "type": "button", "action_ts": str(time.time())}],
        }
        body = urllib.parse.urlencode({"payload": json.dumps(payload)})
        return self.send(body, "application/x-www-form-urlencoded", **kw)

    def event(self, event: dict[str, Any], *, event_id: str = "Ev1", retry_num: int | None = None) -> httpx.Response:
        body = json.dumps({"token": "legacy", "team_id": "T1", "api_app_id": "A1", "type": "event_callback", "event_id": event_id, "event_time": int(time.time()), "event": event})
        headers = {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"} if retry_num else None
        return self.send(body, "application/json", headers=headers)
