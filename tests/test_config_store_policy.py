"""Configuration validation, the store's schema and WAL, and who may do what."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from commands.config import ConfigError, load_config, parse_duration
from commands.policy import Policy
from storage.db import Store
from tests.harness import BASE_CONFIG, write_config

ROOT = Path(__file__).resolve().parent.parent


def test_the_example_config_in_the_repo_is_valid():
    cfg = load_config(ROOT / "recess.toml")
    assert cfg.default_environment == "production"
    assert set(cfg.flags.defaults) == {"portfolio_enabled", "webhook_events", "ai_safety_v2", "i18n_locale_switcher", "advanced_analytics"}
    assert cfg.services["web"].local.listen == "127.0.0.1:8080"


def test_missing_keys_take_their_documented_defaults(tmp_path):
    cfg = load_config(write_config(tmp_path, "", base="[bot]\nchannel = \"C0DEPLOYS\"\n"))
    assert cfg.bot.database == "recess.db" and cfg.bot.state_dir == ".recess"
    assert [(h.start, h.end, h.days) for h in cfg.windows.school_hours] == [
        (dt.time(8), dt.time(15), ["mon", "tue", "wed", "thu", "fri"])]
    env = cfg.environments["production"]
    assert (env.approvals, env.respect_windows, env.keep_blue) == (1, True, dt.timedelta(minutes=30))
    assert cfg.database_path == tmp_path / "recess.db"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[services.web]\nplatform = "local"\n[services.web.local]\nlisten = "8080"\nslots = { blue = "127.0.0.1:1", green = "127.0.0.1:2" }\nrun = "x {port}"',
         "services.web.local.listen: expected HOST:PORT, got '8080'"),
        ('[services.web]\nplatform = "kubernetes"', "services.web.platform: input should be 'local', 'command', 'docker' or 'railway'"),
        ('[services.web]\nplatform = "local"', "platform 'local' needs a [services.NAME.local] table"),
        ('[[tenants]]\nid = "x"\ntimezone = "Mars/Olympus"', "tenants[2].timezone: expected an IANA timezone"),
        ('[[tenants]]\nid = "y"\ntimezone = "UTC"\nschool_hours = [{ start = "15:00", end = "08:00" }]', "expected end after start"),
        ('[[freezes]]\nstart = "2027-04-12T00:00:00"\nend = "2027-04-17T00:00:00-04:00"\nreason = "x"', "freezes[0].start: expected an ISO 8601 instant with an offset"),
        ('[services.web]\nplatform = "command"\nhealth_timeout = "soon"\n[services.web.command]\nstart="a"\nstop="b"\nshift="c"\nstatus="d"',
         "services.web.health_timeout: expected a duration like '90s', '30m' or '2h', got 'soon'"),
        ("[typo]\nx = 1", "typo: unknown key"),
    ],
)
def test_a_wrong_value_names_the_file_the_key_and_what_was_expected(tmp_path, extra, message):
    path = write_config(tmp_path, extra)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_approvals_must_be_a_count(tmp_path):
    path = write_config(tmp_path, "", base=BASE_CONFIG.replace("approvals = 1", 'approvals = "two"'))
    with pytest.raises(ConfigError, match=r"environments\.production\.approvals"):
        load_config(path)


def test_deploy_timeout_defaults_to_30_minutes_and_reads_like_the_other_durations(tmp_path):
    cfg = load_config(write_config(tmp_path, "", base=BASE_CONFIG.replace("approvals = 0", 'approvals = 0\ndeploy_timeout = "1h30m"')))
    assert cfg.environments["production"].deploy_timeout == dt.timedelta(minutes=30)
    assert cfg.environments["staging"].deploy_timeout == dt.timedelta(minutes=90)


@pytest.mark.parametrize(("value", "message"), [
    ('"forever"', "expected a duration like '90s', '30m' or '2h', got 'forever'"),
    ('"0s"', "expected a duration above 0"),
])
def test_a_bad_deploy_timeout_names_its_key(tmp_path, value, message):
    path = write_config(tmp_path, "", base=BASE_CONFIG.replace("approvals = 1", f"approvals = 1\ndeploy_timeout = {value}"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "environments.production.deploy_timeout" in str(err.value)
    assert message in str(err.value)


def test_a_missing_holiday_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"windows\.holidays\[0\]: no such iCalendar file 'nope.ics'"):
        load_config(write_config(tmp_path, "", base=BASE_CONFIG + '\n[windows]\nholidays = ["nope.ics"]\n'))


def test_broken_config_stops_serve_before_touching_slack(tmp_path, slack):
    path = write_config(tmp_path, '[services.web]\nplatform = "local"')
    env = {**os.environ, "RECESS_CONFIG": str(path), "SLACK_API_URL": slack.api_url, "SLACK_SIGNING_SECRET": "s"}
    proc = subprocess.run([sys.executable, "-m", "bot.cli", "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "needs a [services.NAME.local] table" in proc.stderr and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert slack.calls == []


def test_config_check_command_reports_ok(tmp_path):
    path = write_config(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(path), "config", "check"], capture_output=True, text=True)
    assert proc.returncode == 0 and "ok" in proc.stdout


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("500ms", 0.5)])
def test_durations_read_like_people_write_them(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


def test_store_uses_wal_and_a_schema_version_that_migrates_forward_once(tmp_path):
    store = Store(tmp_path / "r.db")
    assert store.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    version = store.schema_version
    assert version >= 1
    assert Store(tmp_path / "r.db").migrate() == version  # a second start applies nothing
    tables = {r["name"] for r in store.rows("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"audit", "freezes", "deploys", "approvals", "steps", "outbox", "flags", "applied_migrations"} <= tables


def test_store_gives_each_thread_its_own_connection(tmp_path):
    import threading

    store = Store(tmp_path / "r.db")
    seen = []
    t = threading.Thread(target=lambda: seen.append(store.db.conn))
    t.start()
    t.join()
    assert seen[0] is not store.db.conn


def _policy(tmp_path, members_of, access: str) -> Policy:  # noqa: ANN001
    base = BASE_CONFIG.replace('[access]\napprovers = ["U0APPROVER1", "U0APPROVER2"]', access)
    return Policy(load_config(write_config(tmp_path, "", base=base)), members_of)


def test_approvers_from_a_user_group_are_resolved_and_cached(tmp_path):
    calls = []

    def members_of(group: str) -> list[str]:
        calls.append(group)
        return ["U0LEAD"]

    policy = _policy(tmp_path, members_of, '[access]\napprovers = ["S0LEADS"]')
    assert policy.can_approve("U0LEAD", "U0ENGINEER")
    assert policy.can_approve("U0LEAD", "U0OTHER")
    assert not policy.can_approve("U0ENGINEER", "U0LEAD")
    assert calls == ["S0LEADS"]  # cached


def test_a_user_group_that_slack_cannot_resolve_grants_nothing(tmp_path):
    def members_of(group: str) -> list[str]:
        raise RuntimeError("plan_upgrade_required")

    policy = _policy(tmp_path, members_of, '[access]\napprovers = ["S0LEADS", "U0ONE"]')
    assert not policy.can_approve("U0LEAD", "U0ENGINEER")
    assert policy.can_approve("U0ONE", "U0ENGINEER")  # plain user IDs keep working


def test_empty_deployers_means_anyone_may_request_and_flag_admins_default_to_approvers(tmp_path):
    policy = _policy(tmp_path, None, '[access]\napprovers = ["U0ONE"]')
    assert policy.can_deploy("U0ANYONE")
    assert policy.can_change_flags("U0ONE") and not policy.can_change_flags("U0ANYONE")
    restricted = _policy(tmp_path, None, '[access]\napprovers = ["U0ONE"]\ndeployers = ["U0DEV"]')
    assert restricted.can_deploy("U0DEV") and not restricted.can_deploy("U0ANYONE")
