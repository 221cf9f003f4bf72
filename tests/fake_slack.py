"""A fake Slack Web API: a small HTTP server that records every call and answers like Slack.

Point recess at it with SLACK_API_URL (or make_client(base_url=fake.api_url)). It can be told to
answer 429 or 500 for the next N calls of a method, to test that deploys never depend on Slack.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


class FakeSlack:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.responses: list[Call] = []  # posts to response_url
        self.user_tz: dict[str, str] = {}
        self.usergroups: dict[str, list[str]] = {}
        self.usergroup_error: str | None = None
        self._faults: dict[str, list[int]] = {}
        self._ts = itertools.count(1)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8")
                if "json" in (self.headers.get("Content-Type") or ""):
                    params = json.loads(raw or "{}")
                else:
                    params = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
                path = self.path.split("?")[0]
                if path.startswith("/respond/"):
                    with fake._cond:
                        fake.responses.append(Call(path, params))
                        fake._cond.notify_all()
                    self._send(200, {"ok": True})
                    return
                method = path.rsplit("/", 1)[-1]
                status, body, headers = fake._answer(method, params)
                self._send(status, body, headers)

            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.api_url = f"http://127.0.0.1:{self.port}/api/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def response_url(self, name: str = "r1") -> str:
        return f"http://127.0.0.1:{self.port}/respond/{name}"

    # -- fault injection ------------------------------------------------------------------------

    def fail_next(self, method: str, status: int, count: int = 1) -> None:
        with self._lock:
            self._faults.setdefault(method, []).extend([status] * count)

    def _answer(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._cond:
            faults = self._faults.get(method)
            if faults:
                status = faults.pop(0)
                self.calls.append(Call(method + f"!{status}", params))
                self._cond.notify_all()
                if status == 429:
                    return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"}
                return status, {"ok": False, "error": "internal_error"}, {}
            self.calls.append(Call(method, params))
            self._cond.notify_all()
        if method in ("chat.postMessage", "chat.update"):
            ts = params.get("ts") or f"{1800000000 + next(self._ts)}.000100"
            return 200, {"ok": True, "channel": params.get("channel"), "ts": ts, "message": {"text": params.get("text")}}, {}
        if method == "users.info":
            user = params.get("user")
            return 200, {"ok": True, "user": {"id": user, "tz": self.user_tz.get(user, "America/New_York")}}, {}
        if method == "usergroups.users.list":
            if self.usergroup_error:
                return 200, {"ok": False, "error": self.usergroup_error}, {}
            group = params.get("usergroup")
            if group not in self.usergroups:
                return 200, {"ok": False, "error": "no_such_subteam"}, {}
            return 200, {"ok": True, "users": self.usergroups[group]}, {}
        if method == "auth.test":
            return 200, {"ok": True, "user_id": "UBOT", "team_id": "T1", "bot_id": "B1"}, {}
        return 200, {"ok": True}, {}

    # -- what tests read --------------------------------------------------------------------------

    def of(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def wait_for(self, predicate, timeout: float = 10.0) -> Any:  # noqa: ANN001
        """Waits until predicate(self) is truthy; returns its value or raises AssertionError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("fake Slack did not see the expected calls in time; saw: " + ", ".join(c.method for c in self.calls))
                self._cond.wait(min(remaining, 0.2))

    def texts(self, method: str = "chat.postMessage") -> list[str]:
        return [c.params.get("text", "") for c in self.of(method)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
