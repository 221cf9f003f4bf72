"""Least environment: what the processes recess starts can see, what the thread shows of their
output, and the bounded numbers slash commands and clicks carry."""

from __future__ import annotations

import datetime as dt
import shutil
import textwrap
from pathlib import Path

import pytest

from bot.listeners.text import MAX_ID, ParseError, parse_id
from commands.config import ConfigError, load_config, parse_config
from commands.deploys import Deployer
from commands.policy import Policy
from platforms import CommandPlatform, LocalPlatform
from platforms.environment import REDACTED, child_env, redact, secrets_of
from storage import deploys as rows
from storage.db import Store
from tests.fake_platform import FakePlatform, Ticker
from tests.harness import APPROVER_1, BASE_CONFIG, ENGINEER, FakeClock, write_config
from tests.platform_fixtures import free_port

BOT_TOKEN = "xoxb-1111-2222-secretbottoken"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
APP_TOKEN = "xapp-1-A0-secretapptoken"
OFREP_KEY = "ofrep-key-0123456789abcdef"
AFTER_SCHOOL = dt.datetime(2027, 3, 17, 2, 0, tzinfo=dt.UTC)

needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None, reason="HAProxy is not installed")


@pytest.fixture
def bot_env(monkeypatch):
    """The bot's environment as `recess serve` has it: Slack credentials and a database URL."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SIGNING_SECRET)
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    monkeypatch.setenv("DATABASE_URL", "postgres://app:s3cret-pw@db/school")
    monkeypatch.setenv("SOMETHING_ELSE", "not for children")


def seen(path: Path) -> dict[str, str]:
    """The environment a child wrote with `env > FILE`."""
    out = {}
    for line in path.read_text().splitlines():
        name, eq, value = line.partition("=")
        if eq:
            out[name] = value
    return out


def assert_least(env: dict[str, str]) -> None:
    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "SOMETHING_ELSE"):
        assert name not in env
    for secret in (BOT_TOKEN, SIGNING_SECRET, APP_TOKEN):
        assert all(secret not in value for value in env.values())
    assert env["DATABASE_URL"] == "postgres://app:s3cret-pw@db/school"  # named in pass_env
    assert env["SCHOOL_REGION"] == "us-east"  # set in env
    assert "PATH" in env


def service(platform: str, **table) -> dict:  # noqa: ANN003
    return {"platform": platform, "env": {"SCHOOL_REGION": "us-east"}, "pass_env": ["DATABASE_URL"], platform: table}


# -- child_env ------------------------------------------------------------------------------------


def test_children_get_the_allow_list_and_what_the_service_names_and_nothing_else():
    cfg = parse_config({"services": {"web": service("command", start="a", stop="b", shift="c", status="d")}})
    environ = {"PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8", "TZ": "UTC",
               "RECESS_CONFIG": "/srv/recess.toml", "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
               "DATABASE_URL": "postgres://db/school", "AWS_SECRET_ACCESS_KEY": "abcdefgh", "PYTHONPATH": "/x"}
    env = child_env(cfg.services["web"], {"RECESS_SLOT": "green"}, environ=environ)
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8", "TZ": "UTC",
                   "RECESS_CONFIG": "/srv/recess.toml", "RECESS_SLOT": "green",
                   "DATABASE_URL": "postgres://db/school", "SCHOOL_REGION": "us-east"}


def test_a_variable_carrying_a_slack_credential_or_an_ofrep_key_is_dropped_whatever_its_name():
    cfg = parse_config({"flags": {"api_keys": [OFREP_KEY]},
                        "services": {"web": {**service("command", start="a", stop="b", shift="c", status="d"),
                                             "pass_env": ["DATABASE_URL", "FLAGS_KEY"]}}})
    environ = {"SLACK_BOT_TOKEN": BOT_TOKEN, "RECESS_NOTE": f"token {BOT_TOKEN}", "FLAGS_KEY": OFREP_KEY,
               "DATABASE_URL": "postgres://db/school"}
    env = child_env(cfg.services["web"], {}, environ=environ)
    assert "RECESS_NOTE" not in env and "FLAGS_KEY" not in env
    assert env["DATABASE_URL"] == "postgres://db/school"


@pytest.mark.parametrize("name", ["SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"])
@pytest.mark.parametrize("key", ["pass_env", "env"])
def test_config_check_refuses_a_slack_credential_named_in_pass_env_or_env(name, key):
    table = {"pass_env": [name]} if key == "pass_env" else {"env": {name: "x"}}
    with pytest.raises(ConfigError) as err:
        parse_config({"services": {"web": {**service("command", start="a", stop="b", shift="c", status="d"), **table}}})
    assert f"services.web.{key}" in str(err.value) and name in str(err.value)
    assert "never passed" in str(err.value)


def test_config_check_refuses_an_ofrep_key_in_a_services_env():
    with pytest.raises(ConfigError) as err:
        parse_config({"flags": {"api_keys": [OFREP_KEY]},
                      "services": {"web": {**service("command", start="a", stop="b", shift="c", status="d"),
                                           "env": {"FLAGS": OFREP_KEY}}}})
    assert "services.web.env.FLAGS" in str(err.value) and "api_keys" in str(err.value)
    assert OFREP_KEY not in str(err.value)


@pytest.mark.parametrize(("table", "problem"), [
    ({"pass_env": ["DATABASE-URL"]}, "environment variable names"),
    ({"pass_env": ["A", "A"]}, "A twice"),
    ({"env": {"RECESS_SLOT": "blue"}}, "RECESS_"),
    ({"env": {"X": 3}}, "string"),
])
def test_config_check_refuses_bad_env_and_pass_env(table, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_config({"services": {"web": {**service("command", start="a", stop="b", shift="c", status="d"), **table}}})


# -- the children themselves ----------------------------------------------------------------------


def test_a_command_hook_cannot_see_the_slack_secrets_but_sees_pass_env(tmp_path, bot_env):
    cfg = parse_config({"services": {"web": service("command", start="env > hook.env", stop="true", shift="true",
                                                    status="true")}}, base_dir=tmp_path)
    CommandPlatform("web", "production", cfg.services["web"], tmp_path, workdir=tmp_path).start("green", "v2")
    env = seen(tmp_path / "hook.env")
    assert_least(env)
    assert env["RECESS_SLOT"] == "green" and env["RECESS_VERSION"] == "v2"


def test_a_local_migration_cannot_see_the_slack_secrets_but_sees_pass_env(tmp_path, bot_env):
    local = {"listen": f"127.0.0.1:{free_port()}", "run": "sleep 30 # {port}", "migrate": "env > migrate.env",
             "slots": {"blue": f"127.0.0.1:{free_port()}", "green": f"127.0.0.1:{free_port()}"}}
    cfg = parse_config({"services": {"web": service("local", **local)}}, base_dir=tmp_path)
    platform = LocalPlatform("web", "production", cfg.services["web"], tmp_path / "state", workdir=tmp_path)
    assert platform.migrate("green", "v2", {"PGOPTIONS": "-c lock_timeout=5s"}).ok
    env = seen(tmp_path / "migrate.env")
    assert_least(env)
    assert env["PGOPTIONS"] == "-c lock_timeout=5s" and env["RECESS_SLOT"] == "green"


@pytest.mark.e2e
@needs_haproxy
def test_a_local_slot_cannot_see_the_slack_secrets_but_sees_pass_env(tmp_path, bot_env):
    local = {"listen": f"127.0.0.1:{free_port()}", "run": "env > slot.env; exec sleep 30 # {port}",
             "slots": {"blue": f"127.0.0.1:{free_port()}", "green": f"127.0.0.1:{free_port()}"}}
    cfg = parse_config({"services": {"web": service("local", **local)}}, base_dir=tmp_path)
    platform = LocalPlatform("web", "production", cfg.services["web"], tmp_path / "state", workdir=tmp_path,
                             start_grace=0.1)
    try:
        platform.start("blue", "v1")
        env = seen(tmp_path / "slot.env")
    finally:
        platform.shutdown()
    assert_least(env)
    assert env["RECESS_SLOT"] == "blue" and env["RECESS_VERSION"] == "v1"


class Thread:
    """Notifications as the pipeline sends them; only the thread lines matter here."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def post_card(self, deploy_id: int) -> None: ...

    def update_card(self, deploy_id: int) -> None: ...

    def thread(self, deploy_id: int, text: str, *, broadcast: bool = False, offer_rollback: bool = False) -> None:
        self.lines.append(text)

    def channel(self, text: str) -> None:
        self.lines.append(text)

    def text(self) -> str:
        return "\n".join(self.lines)


def deploy_with_smoke(tmp_path: Path, smoke: str, **table: str) -> tuple[dict, Thread]:
    """Deploys web v2 over v1 on a fake platform, with `smoke` as the smoke test."""
    extra = textwrap.dedent(f"""
        [services.web]
        platform = "command"
        health_timeout = "1s"
        smoke = {smoke!r}
        pass_env = ["DATABASE_URL", "GRADES_API_TOKEN"]
        env = {{ SCHOOL_REGION = "us-east" }}

        [services.web.command]
        start = "true"
        stop = "true"
        shift = "true"
        status = "true"
        """)
    cfg = load_config(write_config(tmp_path, extra, BASE_CONFIG.replace('"test-key-for-ofrep-0001"', f'"{OFREP_KEY}"')))
    thread = Thread()
    ticker = Ticker()
    fake = FakePlatform(live="v1")
    d = Deployer(cfg=cfg, store=Store(cfg.database_path), policy=Policy(cfg), notify=thread,
                 platform_for=lambda s, e: fake, clock=FakeClock(AFTER_SCHOOL),
                 run_async=lambda fn: fn(), arm=lambda job, at, fn: None, sleep=ticker.sleep, monotonic=ticker)
    rows.insert(d.store, service="web", env="production", version="v1", requester=ENGINEER, status="succeeded",
                traffic_at=dt.datetime(2027, 1, 1, tzinfo=dt.UTC), blue_retired=1)
    req = d.request(actor=ENGINEER, service="web", version="v2")
    d.approve(req["id"], APPROVER_1)
    return rows.get(d.store, req["id"]), thread


def test_a_smoke_test_cannot_see_the_slack_secrets_but_sees_pass_env(tmp_path, bot_env):
    result, _ = deploy_with_smoke(tmp_path, f"env > {tmp_path / 'smoke.env'}")
    assert result["status"] == "succeeded"
    env = seen(tmp_path / "smoke.env")
    assert_least(env)
    assert env["RECESS_VERSION"] == "v2" and env["RECESS_SLOT"] == "green"


def test_thread_output_shows_redacted_in_place_of_every_secret_value(tmp_path, bot_env, monkeypatch):
    monkeypatch.setenv("GRADES_API_TOKEN", "grades-token-42-abcdef")
    # The smoke test prints what it sees and a bot token baked into its own text, then fails.
    smoke = f'echo "token=$GRADES_API_TOKEN db=$DATABASE_URL bot={BOT_TOKEN} flags={OFREP_KEY}" >&2; exit 3'
    result, thread = deploy_with_smoke(tmp_path, smoke)
    assert result["status"] == "failed"
    posted = thread.text()
    assert "smoke test exited 3" in posted
    assert f"token={REDACTED}" in posted and f"bot={REDACTED}" in posted and f"flags={REDACTED}" in posted
    assert f"db=postgres://app:{REDACTED}@db/school" in posted
    for secret in ("grades-token-42-abcdef", BOT_TOKEN, OFREP_KEY, "s3cret-pw"):
        assert secret not in posted


# -- redact ---------------------------------------------------------------------------------------


def test_redact_replaces_every_occurrence_longest_first_and_leaves_short_values_alone():
    assert redact("a xoxb-123456 b xoxb-123456", ["xoxb-123456"]) == f"a {REDACTED} b {REDACTED}"
    assert redact("abcdefgh-and-more", ["abcdefgh", "abcdefgh-and-more"]) == REDACTED
    assert redact("exit 1", ["1", ""]) == "exit 1"  # too short to be a secret: output stays readable


def test_secrets_are_the_slack_values_the_ofrep_keys_and_secret_looking_service_values(monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SESSION_SECRET", "session-secret-value")
    monkeypatch.setenv("REGION", "eu-west-1")
    cfg = parse_config({"flags": {"api_keys": [OFREP_KEY]},
                        "services": {"web": {**service("command", start="a", stop="b", shift="c", status="d"),
                                             "pass_env": ["SESSION_SECRET", "REGION"],
                                             "env": {"DB_PASSWORD": "hunter2-long", "MODE": "production"}}}})
    secrets = secrets_of(cfg.services["web"])
    assert set(secrets) >= {BOT_TOKEN, OFREP_KEY, "session-secret-value", "hunter2-long"}
    assert "eu-west-1" not in secrets and "production" not in secrets


# -- bounded numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("3", 3), ("#12", 12), (str(MAX_ID), MAX_ID)])
def test_parse_id_reads_ascii_digits_in_range(text, expected):
    assert parse_id(text, "freeze") == expected


@pytest.mark.parametrize("text", ["0", "-1", str(MAX_ID + 1), "1180591620717411303424", "\u0663", "３", "1e3", "",
                                  " 3", "3 ", "0x10", "+3", "1_000"])
def test_parse_id_refuses_what_is_not_an_id(text):
    with pytest.raises(ParseError, match="freeze ID"):
        parse_id(text, "freeze")



def test_a_hook_run_without_an_environment_gets_the_base_allow_list_not_the_bots(tmp_path, bot_env):
    from platforms.hooks import run_hook

    ran = run_hook("env", cwd=tmp_path, env=None, timeout=30)
    names = {line.partition("=")[0] for line in ran.stdout.splitlines()}
    assert "PATH" in names
    assert not names & {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "DATABASE_URL", "SOMETHING_ELSE"}
