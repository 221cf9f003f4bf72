"""The sample school app that recess deploys in the demo and the end-to-end tests.

`python -m demo.app --port 8001 --version v2` serves:

- `GET /`               a page naming the version
- `GET /api/v1/health`  200 `{"status": "ok", "version": "v2"}` (also at `/health`)
- `GET /version`        the version, as plain text
- `GET /slow?seconds=N` answers after N seconds (at most 30): a long request, to watch a drain

It speaks HTTP/1.1 with keep-alive (HAProxy keeps connections to it open), exits cleanly on
SIGTERM after the requests in flight are answered, and can be told to misbehave so the
pipeline's failure paths can be shown and tested:

- `DEMO_HEALTH_FAIL=1`          the health endpoint answers 503, forever
- `DEMO_EXIT_AT_START=1`        exit at once with code 3 (a release that crashes on boot)
- `DEMO_FAIL_AFTER_SECONDS=N`   after N seconds every request answers 500 (a release that goes
                                bad after the flip: the bake time should roll it back)
- `DEMO_ACCESS_LOG=1`           log every request to stderr (off by default: it is the slow part)

The same misbehaviour can be asked for by the version's name, so one bot can deploy a good and a
bad release side by side: `v3+unhealthy`, `v3+crash`, `v3+fails-after-5` (seconds).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEALTH_PATHS = ("/api/v1/health", "/health")


class SchoolApp:
    """What the app answers; the HTTP plumbing lives in the handler below."""

    def __init__(self, version: str, *, health_fail: bool = False, fail_after: float | None = None) -> None:
        self.version = version
        self.health_fail = health_fail
        self.fail_after = fail_after
        self.started = time.monotonic()

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`."""
        path, _, query = path.partition("?")
        if self.fail_after is not None and time.monotonic() - self.started >= self.fail_after:
            return 500, "text/plain; charset=utf-8", f"version {self.version} is failing\n".encode()
        if path in HEALTH_PATHS:
            if self.health_fail:
                body = {"status": "failing", "version": self.version}
                return 503, "application/json", json.dumps(body).encode()
            return 200, "application/json", json.dumps({"status": "ok", "version": self.version}).encode()
        if path == "/version":
            return 200, "text/plain; charset=utf-8", self.version.encode()
        if path == "/slow":
            seconds = _seconds(query)
            time.sleep(seconds)
            return 200, "text/plain; charset=utf-8", f"{self.version} after {seconds:g} s\n".encode()
        if path in ("/", "/index.html"):
            v = html.escape(self.version)
            page = (
                "<!doctype html><title>Lincoln Schools</title>"
                f"<h1>Lincoln Schools portal</h1><p>Running version {v}.</p>\n"
            )
            return 200, "text/html; charset=utf-8", page.encode()
        return 404, "text/plain; charset=utf-8", b"not found\n"


def _seconds(query: str) -> float:
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "seconds":
            try:
                return min(max(float(value), 0.0), 30.0)
            except ValueError:
                return 0.0
    return 0.0


class Server(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not hold up the exit
    allow_reuse_address = True
    # After a flip HAProxy opens many connections at once; the default backlog of 5 drops SYNs,
    # which the kernel retries only after a second.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: SchoolApp, access_log: bool) -> None:
        super().__init__(address, Handler)
        self.app = app
        self.access_log = access_log
        self.stopping = False
        self.in_flight = 0
        self.lock = threading.Lock()

    def wait_for_in_flight(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.in_flight == 0:
                    return
            time.sleep(0.02)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length
    disable_nagle_algorithm = True  # headers and body go out as two writes
    timeout = 120  # an idle keep-alive connection is closed after this
    server: Server
    server_version = "recess-demo"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        self._serve(with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(with_body=False)

    def _serve(self, with_body: bool) -> None:
        srv = self.server
        with srv.lock:
            srv.in_flight += 1
        try:
            status, ctype, body = srv.app.answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-App-Version", srv.app.version)
            if srv.stopping:
                # Ask the client (HAProxy) not to reuse this connection: we are going away.
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if with_body:
                self.wfile.write(body)
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        if self.server.access_log:
            super().log_message(format, *args)


def serve(host: str, port: int, app: SchoolApp, access_log: bool = False) -> None:
    server = Server((host, port), app, access_log)

    def on_sigterm(signum: int, frame: object) -> None:
        server.stopping = True
        # shutdown() waits for serve_forever() to return, which runs in this very thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    print(f"demo app {app.version} listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.wait_for_in_flight(timeout=5.0)
        server.server_close()
    print(f"demo app {app.version} stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.app", description="recess demo school app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)

    marks = args.version.split("+")[1:]
    if "crash" in marks or os.environ.get("DEMO_EXIT_AT_START") == "1":
        print(f"demo app {args.version}: DEMO_EXIT_AT_START=1, crashing on boot", file=sys.stderr, flush=True)
        return 3
    fail_after = os.environ.get("DEMO_FAIL_AFTER_SECONDS")
    for mark in marks:
        if mark.startswith("fails-after-"):
            fail_after = mark.removeprefix("fails-after-")
    app = SchoolApp(
        args.version,
        health_fail="unhealthy" in marks or os.environ.get("DEMO_HEALTH_FAIL") == "1",
        fail_after=float(fail_after) if fail_after else None,
    )
    serve(args.host, args.port, app, access_log=os.environ.get("DEMO_ACCESS_LOG") == "1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
