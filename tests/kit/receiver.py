"""A webhook receiver, as a team would write one: it checks X-Recess-Signature with its own HMAC
code (not recess's), refuses stale timestamps, and records what it accepted. It can be told to
answer errors or to hold requests, to test retries and that Slack never waits for it."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    def __init__(self, secret: str, *, tolerance: float = 300) -> None:
        self.secret = secret
        self.tolerance = tolerance
        self.accepted: list[dict[str, Any]] = []  # {"event", "delivery", "body", "headers"}
        self.refused: list[str] = []
        self.attempts: list[str] = []  # X-Recess-Delivery of every POST, in arrival order
        self.fail_next: list[int] = []  # statuses to answer before accepting again
        self.hold = threading.Event()
        self.hold.set()  # cleared: requests wait until it is set again
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                receiver.hold.wait(60)
                status = receiver.take(dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/recess"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def valid(self, header: str, body: str) -> bool:
        fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
        if not fields.get("t", "").isdigit() or abs(time.time() - int(fields["t"])) > self.tolerance:
            return False
        mac = hmac.new(self.secret.encode(), f"{fields['t']}.{body}".encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(mac, fields.get("v1", ""))

    def take(self, headers: dict[str, str], body: str) -> int:
        with self._lock:
            self.attempts.append(headers.get("X-Recess-Delivery", ""))
            if self.fail_next:
                return self.fail_next.pop(0)
            if not self.valid(headers.get("X-Recess-Signature", ""), body):
                self.refused.append(body)
                return 401
            self.accepted.append({"event": headers.get("X-Recess-Event"), "delivery": headers.get("X-Recess-Delivery"),
                                  "body": json.loads(body), "headers": headers})
            return 204

    def events(self, deploy_id: int | None = None) -> list[str]:
        with self._lock:
            return [a["event"] for a in self.accepted
                    if deploy_id is None or (a["body"].get("deploy") or {}).get("id") == deploy_id]

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"the receiver did not see it; accepted: {self.events()}, refused: {len(self.refused)}")
            time.sleep(0.02)

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()
