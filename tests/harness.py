"""Starts a real recess HTTP server in-process (uvicorn on a free port) against the fake Slack,
with an injectable clock, for scenario tests that speak to /slack/events like Slack does."""

from __future__ import annotations

import datetime as dt
import textwrap
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from bot.app import build_app
from bot.runtime import Runtime, build_runtime
from bot.server import build_http_app
from bot.slack_client import make_client
from commands.config import Config, load_config
from tests.kit.ports import free_port  # noqa: F401 (also imported from here)
from tests.kit.signer import SlackSender
from tests.kit.slack import FakeSlack

SECRET = "test-signing-secret"
APPROVER_1 = "U0APPROVER1"
APPROVER_2 = "U0APPROVER2"
ENGINEER = "U0ENGINEER"

BASE_CONFIG = """
[bot]
database = "recess.db"
channel = "C0DEPLOYS"
state_dir = ".recess"

[access]
approvers = ["U0APPROVER1", "U0APPROVER2"]

[[tenants]]
id = "lincoln-high"
timezone = "America/New_York"

[[tenants]]
id = "la-elementary"
timezone = "America/Los_Angeles"

[environments.production]
approvals = 1
respect_windows = true
keep_blue = "30m"
bake_time = "0s"
canary_pause = "0s"

[environments.staging]
approvals = 0
respect_windows = false
keep_blue = "5m"
bake_time = "0s"
canary_pause = "0s"

[flags]
api_keys = ["test-key-for-ofrep-0001"]

[flags.defaults]
portfolio_enabled = true
ai_safety_v2 = false
"""


# The head of the configurations of the tests that SIGKILL `recess serve` and restart it
# (test_crash_recovery, test_release_recovery, test_docker_e2e): one approver, one school,
# production with no approval and no windows, so a deploy runs as soon as it is asked for.
KILLED_BOT_BASE = """
[bot]
database = "recess.db"
channel = "C0DEPLOYS"

[access]
approvers = ["U0APPROVER1"]

[[tenants]]
id = "lincoln-high"
timezone = "America/New_York"

[environments.production]
approvals = 0
respect_windows = false
keep_blue = "30m"
bake_time = "1s"
"""


FAKE_SERVICE = """
[services.web]
platform = "command"
health_path = "/health"
health_timeout = "1s"

[services.web.command]
start = "true"
stop = "true"
shift = "true"
status = "true"
migrate = "true"
"""




def card_value(store, deploy_id: int) -> str:  # noqa: ANN001
    """The value every button of a deploy's card carries (bot.views.deploy.button_value)."""
    from bot.views.deploy import button_value
    from storage import deploys as rows

    return button_value(rows.get(store, deploy_id))


class FakeClock:
    """A settable clock: tests move time instead of waiting for it."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start.astimezone(dt.UTC)
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            return self.now

    def set(self, when: dt.datetime) -> None:
        with self._lock:
            self.now = when.astimezone(dt.UTC)

    def advance(self, **kw: float) -> None:
        with self._lock:
            self.now += dt.timedelta(**kw)


def write_config(folder: Path, extra: str = "", base: str = BASE_CONFIG) -> Path:
    path = folder / "recess.toml"
    path.write_text(textwrap.dedent(base) + "\n" + textwrap.dedent(extra))
    return path


class RecessServer:
    def __init__(self, cfg: Config, slack: FakeSlack, clock: FakeClock | None = None, *, platform_factory=None) -> None:  # noqa: ANN001
        self.cfg = cfg
        self.slack = slack
        self.clock = clock or FakeClock(dt.datetime.now(dt.UTC))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rt: Runtime = build_runtime(
            cfg, client=make_client("xoxb-test", slack.api_url), clock=self.clock, signing_secret=SECRET
        )
        self.rt.extras["serve_url"] = self.url  # as `recess serve` sets it (dashboard sign-in links)
        if platform_factory is not None:
            self.rt.extras["platform_factory"] = platform_factory
        self.rt.start()
        self.bolt = build_app(self.rt)
        http = build_http_app(self.rt, self.bolt)
        self.server = uvicorn.Server(uvicorn.Config(http, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("recess server did not start")
            time.sleep(0.01)
        self.sender = SlackSender(self.url, SECRET, response_url=slack.response_url())
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def command(self, command: str, text: str = "", user: str = ENGINEER, *, late: bool = True,
                **kw) -> httpx.Response:  # noqa: ANN003
        """Sends the command as Slack does. recess acks first: when its answer was not ready within
        the ack budget (a busy machine), the ack says "working on it" and the answer comes through
        the response URL; with `late` (the default) that answer is waited for and returned as the
        response, so a test reads the answer either way. `late=False` returns the ack itself."""
        seen = len(self.slack.responses)
        resp = self.sender.command(command, text, user=user, **kw)
        if not late or resp.status_code != 200 or "Working on it" not in resp.text:
            return resp
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(self.slack.responses) > seen:
                return httpx.Response(200, json=self.slack.responses[seen].params)
            time.sleep(0.01)
        raise AssertionError(f"{command} {text!r} was acked 'working on it' and no answer followed within 60 s")

    def click(self, action_id: str, deploy_id: int, user: str = ENGINEER, **kw) -> httpx.Response:  # noqa: ANN003
        """Clicks a button of deploy `deploy_id`'s card as Slack sends it: the value the card carries
        (the deploy's id and its click token)."""
        return self.sender.action(action_id, card_value(self.rt.store, deploy_id), user=user, **kw)

    def dashboard_link(self, user: str = ENGINEER) -> str:
        """The one-time sign-in link `/deploy dashboard` answers `user` with, as Slack shows it."""
        import re

        resp = self.command("/deploy", "dashboard", user=user)
        found = re.search(r"<(https?://[^|>]+)\|", resp.json().get("text", ""))
        if not found:
            raise AssertionError(f"/deploy dashboard answered no link: {resp.text[:300]}")
        return found.group(1)

    def dashboard_client(self, user: str = ENGINEER) -> httpx.Client:
        """An HTTP client signed in to the web dashboard as `user`, through the link's form."""
        link = self.dashboard_link(user)
        client = httpx.Client(base_url=self.url, timeout=10)
        token = link.split("token=", 1)[1]
        resp = client.post("/dashboard/signin", data={"token": token})
        if resp.status_code != 303:
            raise AssertionError(f"signing in answered {resp.status_code}: {resp.text[:300]}")
        return client

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.rt.stop()
        self.rt.store.close()


def start_server(tmp_path: Path, slack: FakeSlack, extra: str = "", clock: FakeClock | None = None, base: str = BASE_CONFIG) -> RecessServer:
    return RecessServer(load_config(write_config(tmp_path, extra, base)), slack, clock)
