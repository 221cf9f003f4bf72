"""Socket Mode never passes the HTTP edge, so the home-workspace rule is a Bolt middleware there."""

from __future__ import annotations

import json
import urllib.parse

from slack_bolt import BoltRequest

from bot.app import build_app
from tests.harness import write_config


def test_a_socket_mode_command_from_another_workspace_is_refused_and_stores_nothing(tmp_path, slack):
    from bot.runtime import build_runtime
    from bot.slack_client import make_client
    from commands.config import load_config
    from tests.harness import BASE_CONFIG, FAKE_SERVICE

    cfg = load_config(write_config(tmp_path, FAKE_SERVICE, BASE_CONFIG))
    rt = build_runtime(cfg, client=make_client("xoxb-test", slack.api_url), signing_secret="")
    try:
        app = build_app(rt, socket_mode=True)
        home = rt.extras["workspaces"].home
        assert home  # the fake Slack's auth.test names the installed team
        form = {"command": "/deploy", "text": "web v2", "user_id": "U0ENGINEER", "team_id": "T0ELSEWHERE",
                "channel_id": "C0ENG", "response_url": slack.response_url(), "trigger_id": "1.2.3"}
        resp = app.dispatch(BoltRequest(body=urllib.parse.urlencode(form), mode="socket_mode"))
        assert resp.status == 200 and "only the workspace it is installed in" in json.loads(resp.body)["text"]
        assert rt.store.rows("SELECT id FROM deploys") == []
        form["team_id"] = home
        resp = app.dispatch(BoltRequest(body=urllib.parse.urlencode(form), mode="socket_mode"))
        assert "Deploy #1" in json.loads(resp.body)["text"]
    finally:
        rt.stop()
