"""`recess serve` over HTTP and in Socket Mode: what it needs, and what it says when it lacks it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bot.app import build_app
from bot.runtime import build_runtime
from bot.server import build_http_app
from bot.slack_client import make_client
from commands.config import load_config
from tests.harness import write_config


def test_serve_without_a_signing_secret_or_app_token_explains_what_is_missing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN")}
    env["RECESS_CONFIG"] = str(write_config(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "bot.cli", "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "SLACK_SIGNING_SECRET" in proc.stderr and "SLACK_APP_TOKEN" in proc.stderr


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_socket_mode_app_needs_no_signing_secret_and_http_keeps_the_other_routes(tmp_path, slack):
    from slack_bolt.adapter.socket_mode import SocketModeHandler
    from starlette.testclient import TestClient

    rt = build_runtime(load_config(write_config(tmp_path)), client=make_client("xoxb-t", slack.api_url), signing_secret="")
    app = build_app(rt, socket_mode=True)
    handler = SocketModeHandler(app, "xapp-1-test")  # connects only when told to
    assert handler.app is app
    http = TestClient(build_http_app(rt, None))
    assert http.post("/slack/events", content=b"x").status_code == 404
    assert http.get("/api/v1/window", params={"at": "2027-03-20T12:00:00Z"}).json()["safe"] is True
    rt.stop()
